"""Asynchronous processing pipeline: uploaded study -> stored similar-case results.

Django side of the retrieval engine (`retrieval/engine/`, Django-free). Modules:
- `enqueue`: the study's status machine (the pipeline's one writer of `Study.status`), its job, and
  publishing the tasks by name (never importing `retrieval.tasks`);
- `stages`: the stage services of a study (prepare, embed, retrieve) and its CAM jobs;
- `reference`: keeping `ReferenceEmbedding` rows in step with the approved library and model
  versions (approve/retire sync, re-embed on activation, bootstrap of a first model);
- `index_store`: each worker process's in-memory vector index, synchronised incrementally;
- `runtime`: loading the active `RetrievalModel` once per process and slice pixel access;
- `progress`: progress bar and job heartbeat of a running stage;
- `recovery`: re-enqueueing studies whose worker died;
- `selectors`: reads for pages and the API.
"""
