"""ganforge's training core: pure PyTorch, no web, database or queue imports.

`trainer.spec.TrainSpec` defines a job; `trainer.training.Trainer` runs it into sinks;
`ganforge train SPEC --out DIR` does both from the command line.
"""

__version__ = "0.1.0"
