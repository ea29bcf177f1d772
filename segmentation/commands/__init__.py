"""The ``lposs`` commands, one module each; :mod:`segmentation.cli` lists them in a table.

Every command module has ``NAME``, ``HELP`` (the line in ``lposs --help``), ``DESCRIPTION``,
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status). A new command is a new
module here and one entry in :data:`segmentation.cli.COMMANDS`. What several commands share (the
model options, building the model, the one error line) is :mod:`segmentation.commands._common`.
Commands sit on the library (``segmentation``, ``encoders``, ``graphprop``); nothing in the
library imports them.
"""
