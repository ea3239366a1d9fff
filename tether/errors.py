"""Exceptions the command line turns into one clear line instead of a traceback."""


class UserError(Exception):
    """A mistake in what the user gave us (config, data, paths). Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during training: the step finished and a checkpoint was written
    (its path in `checkpoint`). Exit code 130, as for any interrupt."""

    def __init__(self, step: int, checkpoint):
        super().__init__(f"stopped after step {step}, checkpoint {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class TrainingDiverged(Exception):
    """The loss or gradient became NaN/inf. Exit code 1; the last good checkpoint is kept."""

    exit_code = 1


class WeakRewardModel(Exception):
    """The pipeline's reward model cannot be told from chance on held-out labels: it stops
    before PPO and best-of-n would optimise it. Exit code 1; every finished stage is kept."""

    exit_code = 1
