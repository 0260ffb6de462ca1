"""The spine every method, engine and command builds on (DESIGN.md, "Core objects").

- ``mobiledl.core.task``: the ``Task`` interface (batches of inputs of any structure, loss,
  metric, example input) and ``TensorTask``, its in-memory implementation.
- ``mobiledl.core.inputs``: model inputs of any structure (a tensor, a tuple or a dict of
  tensors), ``call_model`` that runs a model on them, and ``InputSpec``, an input described
  without data (name, shape, dtype, integer range).
- ``mobiledl.core.config``: ``MethodConfig``, the typed, frozen, versioned base of every
  method's config, and per-layer overrides.
- ``mobiledl.core.methods``: the registry of methods and ``apply(model, config, task)``, the
  one entry point that applies any of them (module in, a new module out).
"""
