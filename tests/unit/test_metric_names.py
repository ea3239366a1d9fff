"""The metric vocabulary (tether.metric_names): one spelling per name, old spellings read as
today's. That every stage writes what the report plots is checked on a whole tiny pipeline
(tests/unit/test_pipeline.py)."""

from tether import metric_names
from tether.eval.health import KINDS, health_flags
from tether.rundir import read_metrics

NAMES = {value for key, value in vars(metric_names).items()
         if key.isupper() and isinstance(value, str)}


def test_every_name_is_namespaced_and_defined_once():
    constants = [value for key, value in vars(metric_names).items()
                 if key.isupper() and isinstance(value, str) and not key.endswith("_PREFIX")]
    assert len(constants) == len(set(constants))  # no two constants for one name
    assert all(name.count("/") == 1 and name == name.lower() for name in constants)


def test_old_spellings_map_to_current_names_and_shadow_none():
    assert set(metric_names.RENAMED.values()) <= NAMES
    assert not set(metric_names.RENAMED) & NAMES  # an old name is never a live one


def test_held_out_twins_live_under_eval():
    assert set(metric_names.HELD_OUT.values()) <= NAMES
    assert all(name.startswith(metric_names.EVAL_PREFIX)
               for name in metric_names.HELD_OUT.values())


def test_the_health_flags_are_defined_names():
    assert set(health_flags({})) == {metric_names.HEALTH_PREFIX + kind for kind in KINDS}
    assert set(health_flags({})) <= NAMES


def test_read_metrics_reads_old_spellings_as_current_names(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "loss/eval": 2.0, "reward/eval_accuracy": 0.5}\n\n'
                    '{"step": 1, "loss/train": 1.0, "reward/train_accuracy": 0.75}\n')
    assert read_metrics(path) == [
        {"step": 0, "eval/loss": 2.0, "eval/accuracy": 0.5},
        {"step": 1, "loss/train": 1.0, "reward/accuracy": 0.75}]
