"""The outlier probe: one no-grad pass of a model over fixed windows that captures what the
metrics read (a ``metrics.ProbeResult``), for this project's GPT (``ours``) and for Hugging
Face causal LMs (``hf``, through the attention function of ``hf_attention``), by the same
hooks (``capture``) on the probe points that ``families`` declares for each architecture.
The monitor (during training), analyze.py and the interventions call it; it sits below
them and imports only the metrics, the models and the errors."""
