"""configs/schema.py: one table gives the defaults, the validation, the listing and the resume
rules; a field added to it appears in all four."""

import dataclasses
import os

import pytest

from configs import checks, common, schema
from trainer import workdir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The resume rules as the workdir applied them before they came from the table, written out
# independently: fields that change only how or how often things are done, and the run's length.
FREE = (
  "log_every_steps checkpoint_every_steps keep_checkpoints eval_every_steps compilation_cache "
  "profile_steps mesh.data mesh.fsdp sharding.min_size grad_accum_steps model.scan model.remat "
  "model.depthwise_impl data.data_dir init_from eval_only probe.enabled probe.train_examples "
  "probe.k probe.temperature probe.batch_size data.stats_images probe.data"
).split()
FREE += ["log.wandb", "log.wandb_entity", "log.wandb_name"]  # where the run is followed
FREE += ["storage.retries", "storage.retry_delay", "storage.retry_max_delay"]  # how, not what
EXTEND = ["total_steps", "num_epochs"]


def test_docs_config_md_is_the_tables_listing():
  with open(os.path.join(ROOT, "docs", "config.md")) as f:
    assert f.read() == schema.markdown(), "regenerate: python -m configs.schema > docs/config.md"


@pytest.mark.parametrize("job", schema.JOBS)
def test_every_field_of_a_config_is_in_the_table_and_only_those(job):
  config = common.pretrain_config("base") if job == "pretrain" else common.finetune_config("base")
  assert set(workdir.flat(config)) == {f.name for f in schema.fields(job)}


def test_resume_rules():
  for f in schema.FIELDS:
    expected = schema.FREE if f.name in FREE else schema.EXTEND if f.name in EXTEND else "refuse"
    assert schema.resume_rule(f.name) == expected, f.name
  assert schema.resume_rule("a.field.from.another.version") == schema.REFUSE


def test_a_field_added_to_the_table_reaches_defaults_checks_listing_and_resume(monkeypatch):
  added = schema.Field(
    "optim.lookahead_steps",
    lambda size: 5 if size == "huge" else 0,
    "steps between Lookahead syncs; 0 = none",
    schema.FREE,
    checks.non_negative,
    schema.FINETUNE,
  )
  monkeypatch.setattr(schema, "FIELDS", schema.FIELDS + (added,))
  monkeypatch.setattr(schema, "BY_NAME", {**schema.BY_NAME, added.name: added})
  # Defaults, per size and job.
  assert common.finetune_config("huge").optim.lookahead_steps == 5
  config = common.finetune_config("atto")
  assert config.optim.lookahead_steps == 0
  assert "lookahead_steps" not in common.pretrain_config("atto").optim
  # Validation.
  config.optim.lookahead_steps = -1
  with pytest.raises(schema.ConfigError, match=r"--config.optim.lookahead_steps=-1: expected"):
    schema.validate(config)
  # The listing.
  assert "| `optim.lookahead_steps` | `0`; `5` for huge | finetune | free |" in schema.markdown()
  # The resume rules: a change is free, not refused.
  old, new = common.finetune_config("atto"), common.finetune_config("atto")
  new.optim.lookahead_steps = 3
  changes = workdir.differences(workdir.flat(old), workdir.flat(new))
  assert [schema.resume_rule(name) for name, *_ in changes] == [schema.FREE]


@pytest.mark.parametrize(
  "field, value, expected",
  [
    ("model.variant", "medium", "expected one of atto, femto"),
    ("fcmae.mask_ratio", 1.5, "expected a ratio in [0, 1)"),
    ("fcmae.mask_ratio", 0.99, "it leaves no visible patch"),
    ("data.image_size", 100, "a positive multiple of 32"),
    ("grad_accum_steps", 3, "a divisor of batch_size 4096"),
    ("total_steps", 0, "num_epochs or total_steps > 0"),
    ("profile_steps", "5:2", "START < END"),
    ("optim.layer_decay_scheme", "triple", "expected one of single, group"),
    ("storage.retries", 0, "a positive integer"),
    ("storage.retry_delay", 0.0, "seconds > 0"),
    ("storage.retry_max_delay", 0.5, "expected at least storage.retry_delay (1.0)"),
  ],
)
def test_a_bad_value_names_its_field(field, value, expected):
  config = common.pretrain_config("base")
  if field == "total_steps":
    config.num_epochs = 0
  *parents, leaf = field.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  node[leaf] = value
  with pytest.raises(schema.ConfigError) as info:
    schema.validate(config)
  assert f"--config.{field}=" in str(info.value) and expected in str(info.value)


def test_fields_are_declared_once():
  names = [f.name for f in schema.FIELDS]
  assert len(names) == len(set(names))
  assert all(dataclasses.is_dataclass(f) for f in schema.FIELDS)
