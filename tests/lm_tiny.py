"""A tiny offline tokenizer (WordLevel, digits and a few words, with a chat template) and a
tiny random Llama, for the decoder tests. Nothing here touches the network."""
from __future__ import annotations

import torch

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<user>", "<bot>", "what", "is", "plus", "times",
         "minus", "the", "answer", "=", "so", "####"] + [str(i) for i in range(100)]
# Jinja chat template in the shape of SmolLM2's: user turn, then the assistant header.
CHAT = ("{% for m in messages %}<s> <user> {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}<s> <bot> {% endif %}")


def tiny_tokenizer(padding_side: str = "left"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>", eos_token="</s>")
    tok.chat_template = CHAT
    tok.padding_side = padding_side
    return tok


def tiny_llama(vocab_size: int = len(WORDS), seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, pad_token_id=0, bos_token_id=2,
                      eos_token_id=3, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def arith_rows(n: int, seed: int = 0):
    """'what is a plus b' -> 'a+b' style rows over the tiny vocabulary."""
    import random
    from dynsdpb.decoder.data import LMExample
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        out.append(LMExample(f"what is {a} plus {b}", f"the answer is {a + b}", str(a + b)))
    return out


def tiny_decoder_files(root, n_rows: int = 48) -> tuple[str, str]:
    """(model folder, arith.jsonl): the tiny random Llama and its tokenizer saved as a model
    folder, and n_rows prompt/target/answer rows, for runs through the real engine."""
    import json
    from pathlib import Path
    root = Path(root)
    model = root / "tiny-llama"
    tiny_llama(seed=0).save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    data = root / "arith.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "target": e.target,
                                        "answer": e.answer}) + "\n"
                            for e in arith_rows(n_rows)))
    return str(model), str(data)
