"""benchmarks/current.py: the current-figures table at the top of BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import current

BENCHMARKS = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"

INTRO = "# Benchmarks\n\nThe newest figures first.\n"
HISTORY = """
## History

Figures appended by the `make bench-*` targets; newest last.

## bench-data: augmentation pipeline vs ImageDataGenerator (2026-11-22 04:07 UTC)

Machine: AMD EPYC, 2 cores, 24 GiB RAM, no GPU used; Python 3.11.7; Keras backend tensorflow

```
   ImageDataGenerator: 2,885 ± 425 images/s (n=5)
   our Keras layers:   12,199 ± 527 images/s (n=5)
   ratio (ours / ImageDataGenerator): 4.2x (goal: at least 5x)
```

## threads: two workers on two cores (2026-11-22 18:25 UTC, by hand)

Machine: AMD EPYC, 2 cores, 24 GiB RAM, no GPU

## bench-data: augmentation pipeline vs ImageDataGenerator (2026-11-23 09:15 UTC)

```
Machine: Intel(R) Xeon(R) Processor, 16 cores, 126 GiB RAM, GPU: NVIDIA H100 80GB HBM3; Python 3.12.3
   ImageDataGenerator: 2,491 ± 433 images/s (n=5)
   our RandomAffine:   22,088 ± 2,498 images/s (n=5)
   ratio (ours / ImageDataGenerator): 8.9x (goal: at least 5x)
## bench-data: not a heading, inside a fenced block (2026-12-31 00:00 UTC)
```
"""


def _row(table: str, name: str) -> list[str]:
    rows = [line.strip("|").split(" | ") for line in table.splitlines()]
    return next([cell.strip() for cell in row] for row in rows if row[0].strip() == name)


def test_the_table_shows_the_newest_section_of_a_benchmark():
    text = INTRO + HISTORY
    assert [s.title for s in current.parse_sections(text)] == [
        "bench-data: augmentation pipeline vs ImageDataGenerator", "threads: two workers on two cores",
        "bench-data: augmentation pipeline vs ImageDataGenerator"]
    name, latest, goal, date, machine = _row(current.current_table(text), "bench-data")
    assert latest == "our RandomAffine 8.9x ImageDataGenerator's images/s"
    assert (goal, date, machine) == ("at least 5x", "2026-11-23 09:15 UTC", "1x H100")
    assert "4.2x" not in current.current_table(text)
    assert _row(current.current_table(text), "bench-gpu")[1] == current.NO_SECTION


def test_update_inserts_the_block_after_the_first_paragraph_and_leaves_the_rest(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_bytes((INTRO + HISTORY).encode())
    assert current.update(path)
    text = path.read_bytes().decode()
    block = f"\n{current.BEGIN}\n{current.current_table(INTRO + HISTORY)}\n{current.END}\n"
    assert text == INTRO + block + HISTORY
    assert not current.update(path)
    assert path.read_bytes().decode() == text


def test_update_rewrites_a_stale_block_only_and_is_idempotent(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_bytes(f"{INTRO}\n{current.BEGIN}\n| benchmark | stale |\n{current.END}\n{HISTORY}".encode())
    assert current.update(path)
    first = path.read_bytes()
    table = current.current_table(INTRO + HISTORY)
    assert first == f"{INTRO}\n{current.BEGIN}\n{table}\n{current.END}\n{HISTORY}".encode()
    assert first.split(current.END.encode())[1] == f"\n{HISTORY}".encode()  # below the block: byte for byte
    assert not current.update(path)
    assert path.read_bytes() == first


def test_a_lone_marker_is_refused():
    with pytest.raises(ValueError):
        current.with_current_table(INTRO + current.END + HISTORY)


def test_the_repository_table_is_current():
    text = BENCHMARKS.read_text(encoding="utf-8")
    assert current.read_block(text) == current.current_table(text), (
        "BENCHMARKS.md's current-figures table is stale: run `python -m benchmarks.current`")


@pytest.mark.parametrize("headline", current.HEADLINES, ids=lambda h: h["name"])
def test_each_headline_finds_its_sections_and_figure(headline):
    sections = current.parse_sections(BENCHMARKS.read_text(encoding="utf-8"))
    assert current.matching(headline, sections), f"no section of BENCHMARKS.md matches {headline['title']!r}"
    newest = current.newest(headline, sections)
    assert current.figure(headline, newest), f"{headline['name']}: no figure in the section of {newest.date}"


@pytest.mark.parametrize("machine, short", [
    ("AMD EPYC, 2 cores, 24 GiB RAM, no GPU used; Python 3.11.7", "AMD EPYC, 2 cores, no GPU"),
    ("Intel(R) Xeon(R) Processor, 2 cores, 24 GiB RAM, no GPU; Python 3.11.7", "Intel Xeon, 2 cores, no GPU"),
    ("Intel Xeon, 16 cores, 126 GiB RAM, 1 x NVIDIA H100 80GB HBM3 (driver", "1x H100"),
    ("one NVIDIA H200 (143,771 MiB), 16 cores; Keras backend jax", "1x H200"),
    ("", "—"),
])
def test_machines_are_shortened(machine, short):
    assert current.short_machine(machine) == short
