"""The rxrx2-zarr benchmark suite: ``python -m benchmarks [--quick|--smoke] [--out DIR]`` from the repository root.

Every comparison runs both sides in the same process run, on the same sites, with the same number of threads, and
reports medians of repeated runs and their ratio. Nothing is hard-coded: every figure in the JSON, the Markdown
table and the plots comes from the run that wrote them. Modules:

* ``_config``: the three sizes of run (smoke, quick, full);
* ``_data``: the generated datasets and metadata-only stores, cached by their parameters;
* ``_measure``: timers, interleaved latency/throughput, peak-RSS sampler; ``_access``: how each side reads;
* ``_machine``: machine facts and library versions;
* workloads: ``_convert_bench`` (convert), ``_storage_bench`` (storage, codecs), ``_reads`` (read_full,
  read_crop, scan, query), ``_startup`` (startup), ``_scaling`` (worker_scaling), ``_peers`` (peers),
  ``_loader`` (loader);
* ``_report``: targets, JSON, Markdown and plots; ``_suite``: runs it all.
"""
