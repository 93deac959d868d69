"""The encoder family: sequence classification and regression with a BERT-style model.

    data.py    built-in datasets (loaders), files and hub ids -> deduplicated, split rows
    models.py  built-in, local and hub encoders with a new head
    views.py   views for text: token-mask, word-dropout, span-cutoff augmenters on token ids
    task.py    SequenceClassification, SequenceRegression: the engine's task seam for encoders
"""
