"""The quantize drivers: they walk the model, capture calibration inputs, swap modules and report
progress; the method handlers (:mod:`onebit.registry`) only turn weights into packed modules.

* :mod:`.quantize`: the in-memory driver behind ``onebit.quantize()`` — picks the layer-wise or the
  block-sequential path from what the handler declares;
* :mod:`.layerwise` / :mod:`.sequential`: those two paths;
* :mod:`.embeddings`: the quantized embedding / head swap (``embed=``);
* ``onebit.pipelines.streaming`` / ``onebit.pipelines.streaming_blocks``: the same drivers reading and
  writing safetensors one tensor / one block at a time (same layer).

Nothing is imported here (each driver imports torch / transformers when it runs).
"""
