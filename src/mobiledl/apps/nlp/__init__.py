"""Transformers on device (Cai et al. 2022, Sec. 5, NLP): a BERT-style sentence encoder of our
own that loads pretrained Hugging Face weights (``encoder``), cascade token pruning and head
pruning (``encoder``, ``heads``), int8 in ONNX Runtime (``export``), and a linear probe that
judges a compressed encoder on the text tasks (``probe``). See ``docs/nlp.md``.
"""
