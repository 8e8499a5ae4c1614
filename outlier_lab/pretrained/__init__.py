"""Hugging Face causal LMs through the outlier metrics, interventions and compression of our
own GPT: ``load`` (a model, its tokenizer and family), ``interventions``, ``compress`` and
``convert`` (GPT-2 weights to and from our GPT). Their probe is ``outlier_lab.probe.hf``.
docs/pretrained.md."""
