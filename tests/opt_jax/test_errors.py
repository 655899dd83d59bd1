"""One error family: every error a user can cause is an OptJaxError; scripts print those and nothing else."""

import pytest

from opt_jax import cli, errors


def test_every_user_error_is_an_opt_jax_error():
    import analyses
    import opt_jax
    from analyses.collection.ngrams import NgramBudgetError
    from opt_jax.corpus import CorpusError
    from opt_jax.train import TrainError

    for cls in (opt_jax.ConfigError, opt_jax.CheckpointError, CorpusError, TrainError, analyses.StatsError,
                NgramBudgetError, errors.TokenizerError, errors.InputError, errors.MissingError,
                errors.AnalysisError):
        assert issubclass(cls, opt_jax.OptJaxError), cls
    assert issubclass(analyses.StatsError, ValueError) and issubclass(NgramBudgetError, RuntimeError)
    assert issubclass(errors.MissingError, FileNotFoundError)


def test_cli_prints_a_user_error_and_exits_1(capsys):
    def fail():
        raise errors.StatsError("stats/x: not a statistics directory")

    assert cli.run(fail, str) == 1
    assert capsys.readouterr().err == "error: stats/x: not a statistics directory\n"
    assert cli.run(lambda: 3, lambda r: f"done {r}") == 0
    assert capsys.readouterr().out == "done 3\n"


def test_cli_lets_a_bug_show_its_traceback():
    def bug():
        raise ValueError("an internal numpy error")

    with pytest.raises(ValueError, match="internal"):
        cli.run(bug, str)
