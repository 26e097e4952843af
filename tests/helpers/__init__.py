"""Code the tests share, none of it a test or a fixture (fixtures live in tests/conftest.py).

- ``ray_head``: a Ray head (and worker nodes) on 127.0.0.1 in processes of their own, started and stopped by a test.
- ``s3_server``: moto's S3 server over real HTTP with IAM checking, and a failure-injecting proxy.
- ``tiny_decoders``: 2-layer Llama- and Qwen3-shaped embedding models built from a config.
- ``job_submit``: docs/deploy.md's ``ray job submit`` command, read from the page and re-pointed.
- ``job_main``: a job's command line (``jobs.index``, ``jobs.query``) run in the test's process: exit code and output.

``tests/conftest.py`` puts ``tests/`` on ``sys.path``, so tests import ``helpers.<module>``.
"""
