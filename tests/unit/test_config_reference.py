"""docs/config.md is the configuration classes' own reference: current with the code, a comment for every field
(found in review: cpu_worker_memory_bytes, worker_start_timeout_s, tick_s, restart_reset_s, dtype and most
[policy] keys were in no doc a user would find), and every key it lists, at its default, taken by the loader."""

import pathlib

from warmserve import config_reference
from warmserve.config_file import cluster_config_from_dict

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_the_page_is_current_with_the_classes():
    assert PAGE.read_text() == config_reference.markdown(), (
        "docs/config.md is stale: python -m warmserve.config_reference > docs/config.md")


def test_every_listed_key_at_its_default_loads(tmp_path):
    data: dict = {}
    for heading, cls, _ in config_reference.tables():
        keys = config_reference._defaults(cls)
        listed = config_reference.table_keys(heading, cls)
        table = {k: (list(v) if isinstance(v, tuple) else v) for k, v in keys.items() if k in listed}
        if heading == "top level":
            data.update(table)
        elif heading == "[[models]]":
            data["models"] = [{**table, "path": str(tmp_path / "m")}]
        else:
            data[heading.strip("[]")] = table
    got = cluster_config_from_dict(data)
    assert got.controller.tick_s == 0.5 and got.models[0].name == "m" and got.server.port == 8000


def test_a_field_without_a_comment_has_none_to_list():
    class Bare:
        #: Said.
        said: int = 1
        unsaid: int = 2

    assert config_reference.field_comments(Bare) == {"said": "Said."}
