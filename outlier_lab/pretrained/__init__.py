"""Hugging Face causal LMs through the outlier metrics, interventions and compression of our
own GPT: ``families`` (where the probe points are in each architecture), ``attention`` (the
probe attention registered with transformers), ``probe``, ``load``, ``interventions``,
``compress`` and ``convert`` (GPT-2 weights to and from our GPT). docs/pretrained.md."""
