"""paralleldecode: answer many questions that share a context together.

The library (this package) holds records, data adapters, the decoding engine, strategies,
metrics and model loading; it never imports Lightning. The LightningModules live in
``lightning_modules`` and the LightningDataModules in ``datamodules``; ``paralleldecode.cli``
ties them together as a LightningCLI.
"""

__version__ = "0.1.0"
