"""One run of an experiment, one job per module:

- :mod:`~rlhf_lab.run.plan`: which stages the run builds, and every refusal the config decides (no torch);
- :mod:`~rlhf_lab.run.resolver`: each artifact built once, after the inputs its builder's signature names;
- :mod:`~rlhf_lab.run.builders`: one module per artifact, its cache key and its build;
- :mod:`~rlhf_lab.run.store`: how an artifact is cached, locked, checksummed and resumed, over ranks;
- :mod:`~rlhf_lab.run.fitting`: fitting a stage's Lightning module (resumable, gathered, checked);
- :mod:`~rlhf_lab.run.preflight`: the trainer, memory and length checks before any training;
- :mod:`~rlhf_lab.run.evaluation` and :mod:`~rlhf_lab.run.outputs`: the figures and the run directory;
- :mod:`~rlhf_lab.run.loop`: iterated rounds of feedback, reward model and policy;
- :mod:`~rlhf_lab.run.experiment`: plan -> pre-flight -> stages -> policy -> evaluation -> outputs;
- :mod:`~rlhf_lab.run.worker`: the entry point of ranks 1..N-1.
"""
