"""Transformers on device (Cai et al. 2022, Sec. 5, NLP): a BERT-style sentence encoder of our
own that loads pretrained Hugging Face weights, with SpAtten cascade token pruning
(``encoder``), its tokenizer (``pretrained``) and a linear probe that judges a compressed
encoder on the text tasks (``probe``). Head pruning is ``mobiledl.compress.prune.heads``; the
encoder in ONNX Runtime, fp32 and int8, is ``mobiledl.deploy.text_encoder``. See
``docs/nlp.md``.
"""
