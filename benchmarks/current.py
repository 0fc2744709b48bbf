"""The "current figures" table at the top of BENCHMARKS.md: the newest headline figure of each benchmark.

BENCHMARKS.md is a log, newest last: a `## TITLE (DATE[, note])` section per run, each with a
`Machine:` line and a fenced block of figures. HEADLINES says which figure of each benchmark is worth
a row, which sections hold it (by title) and how to pull it and its goal out of a section's text.
`update()` rewrites the table between BEGIN and END and leaves everything else in the file byte for
byte; `benchmarks.machine.publish` calls it after every `make bench-*` target appends its section.

    python -m benchmarks.current [--path BENCHMARKS.md] [--check]

--check changes nothing and exits 1, printing the difference, when the table is stale.
tests/benchmarks/test_current_figures.py checks that the repository's table is current and that
every headline still finds its sections and its figure: a renamed benchmark or a reworded figure
fails there, not silently here.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NotRequired, TypedDict

logger = logging.getLogger(__name__)

BEGIN = "<!-- current-figures:begin -->"
END = "<!-- current-figures:end -->"
DEFAULT_PATH = "BENCHMARKS.md"
HEADER = ("benchmark", "latest figure", "goal", "date", "machine")
NO_GOAL = "—"
NO_SECTION = "— (no section yet)"
NOT_FOUND = "— (not found in the newest section; see it below)"
# A dated section heading; an undated `## ` heading (`## History`) ends the section above it but is none.
HEADING = r"## (?P<title>.+?) \((?P<when>\d{4}-\d\d-\d\d[^)]*)\)\s*"
# Figure, part and goal patterns are searched in a section's body with these flags.
FLAGS = re.DOTALL | re.MULTILINE
# "(goal: at least 5x)", "(reached in 3/5 seeds; goal: at most 10%)", "(goal: at most 2x: met)".
GOAL = r"\bgoal: ([^:;)\n]+)"


@dataclass(frozen=True)
class Section:
    """One dated `## ` section of the log."""

    title: str  # the heading without `## ` and its trailing parentheses
    date: str  # those parentheses up to the first comma: "2026-11-22 04:20 UTC", "2026-11-28"
    machine: str  # the text of its first `Machine:` line (in or out of the fenced block), "" if none
    body: str  # the text under the heading, up to the next `## ` heading


class Headline(TypedDict):
    """A row of the table: its benchmark's newest section, and what to show of it."""

    name: str  # the row's first cell
    title: str  # pattern searched in a section's title: the sections of this benchmark
    part: NotRequired[str]  # pattern the body must hold too: sections that ran this part (bench-storage --parts)
    figure: str | Callable[[str], str | None]  # pattern whose named groups fill `template`, or body -> figure
    template: NotRequired[str]
    goal: NotRequired[str]  # pattern whose group is a goal; every distinct match, joined by "; "
    fixed_goal: NotRequired[str]  # when `goal` is absent or finds nothing (default NO_GOAL)


def _case_name(title: str) -> str:
    """ "simple_cnn, --profile smoke" -> "smoke"; "simple_cnn, full data (45,000 ...)" -> "full data"."""
    return title.split(" (")[0].split(", ")[-1].removeprefix("--profile ")


def breakdown_figure(body: str) -> str | None:
    """bench-breakdown: whole trials' time, the last setting against the baseline, per case."""
    cases = re.findall(r"^(\S[^\n]*?): \d+ trials a run", body, re.MULTILINE)
    totals = re.findall(r"^ +all phases .*?([\d.]+)x?$", body, re.MULTILINE)
    columns = re.search(r"^ +phase +(.+)$", body, re.MULTILINE)
    base = re.search(r"ratios to (.+)$", body, re.MULTILINE)
    if not cases or not columns or len(totals) != len(cases):
        return None
    last = re.split(r"\s{2,}", columns[1].strip())[-1]
    ratios = ", ".join(f"{total}x {_case_name(case)}" for total, case in zip(totals, cases))
    return f"whole trials, {last} / {base[1] if base else 'baseline'}: {ratios}"


def gpu_figure(body: str) -> str | None:
    """bench-gpu: trials a minute packed against one worker per GPU; most GPU memory in use at a trial's start."""
    phase, pace, workers = "", {}, {}
    for line in body.splitlines():
        if started := re.match(r"(\w+): exit ", line):
            phase = started[1]
        elif placed := re.match(r" +placements: (.*)", line):
            workers[phase] = placed[1].count("(slot ")
        elif paced := re.match(r" +pace: ([\d.]+) finished trials a minute", line):
            pace[phase] = paced[1]
    in_use = [float(mib) for mib in re.findall(r"GPU MiB in use at trial start: [^\n]*?max ([\d.]+)", body)]
    if "packed" not in pace or "one_per_gpu" not in pace:
        return None
    memory = f"; at most {max(in_use):g} MiB of GPU memory in use at a trial's start" if in_use else ""
    packed = f"{workers['packed']} workers" if workers.get("packed") else "workers"
    return f"{packed} packed: {pace['packed']} trials/min vs {pace['one_per_gpu']} with one worker per GPU{memory}"


# bench-peers (benchmarks/peers.py), the project's headline, at the top of the table: fc_head against a
# plain Optuna script; simple_cnn against Keras Tuner's Hyperband joins HEADLINES once that case has run.
PEERS_FC_HEAD: Headline = {
    "name": "bench-peers, fc_head", "title": r"^bench-peers:", "part": r"^fc_head: this service",
    "figure": r"^fc_head: this service (?P<ours>[\d.]+) trials/min against plain Optuna's (?P<peer>[\d.]+) "
              r"\((?P<ratio>[\d.]+x)\), best validation accuracy (?P<best>[\d.]+) against (?P<peer_best>[\d.]+) "
              r"\((?P<delta>[+-][\d.]+)\) after (?P<budget>\d+ s), mean of (?P<seeds>\d+) seeds",
    "template": "fc_head quick, {budget} a run: {ratio} plain Optuna's trials a minute ({ours} vs {peer}), best "
                "validation accuracy {best} vs {peer_best} ({delta}); {seeds} seeds",
    "goal": r"^fc_head: this service[^\n]*\(goal: ([^)\n]+)\)",
}
PEERS_SIMPLE_CNN: Headline = {
    "name": "bench-peers, simple_cnn", "title": r"^bench-peers:", "part": r"^simple_cnn: this service",
    "figure": r"^simple_cnn: this service's best validation accuracy (?P<best>[\d.]+) against Keras Tuner's "
              r"Hyperband's (?P<peer>[\d.]+) \((?P<delta>[+-][\d.]+)\) after (?P<budget>\d+ s), mean of "
              r"(?P<seeds>\d+) seeds",
    "template": "simple_cnn, full CIFAR-10, {budget} a run: best validation accuracy {best} vs Keras Tuner's "
                "Hyperband's {peer} ({delta}); {seeds} seeds",
    "goal": r"^simple_cnn: this service[^\n]*\(goal: ([^)\n]+)\)",
}
PEERS_FIDELITY: Headline = {
    "name": "bench-peers, simple_cnn by data", "title": r"^bench-peers:", "part": r"^simple_cnn: fidelity by data",
    "figure": r"^simple_cnn: fidelity by data (?P<data>[\d.]+) against epochs only (?P<epochs>[\d.]+) "
              r"\((?P<delta>[+-][\d.]+)\) best validation accuracy after (?P<budget>\d+ s), (?P<rate>[\d.]+) against "
              r"(?P<epochs_rate>[\d.]+) trials/min, mean of (?P<seeds>\d+) seeds?",
    "template": "simple_cnn, full CIFAR-10, {budget} a run: fidelity by data {data} vs epochs only {epochs} ({delta}) "
                "best validation accuracy, {rate} vs {epochs_rate} trials/min; {seeds} seed(s)",
    "fixed_goal": "measured against epochs only (issue 26, part 2), no target",
}
PEERS_HEADLINES: tuple[Headline, ...] = (PEERS_FC_HEAD, PEERS_SIMPLE_CNN, PEERS_FIDELITY)


HEADLINES: tuple[Headline, ...] = (
    PEERS_FC_HEAD,
    PEERS_SIMPLE_CNN,
    PEERS_FIDELITY,
    {"name": "bench-data", "title": r"^bench-data:",
     "figure": r"^ +(?P<ours>our [^:\n]+?): .*?ratio \(ours / ImageDataGenerator\): (?P<ratio>[\d.]+x)",
     "template": "{ours} {ratio} ImageDataGenerator's images/s", "goal": GOAL},
    {"name": "bench-search", "title": r"^bench-search:",
     "figure": r"needs to reach \(1\)'s final best: (?P<median>[^(\n]+?) \(reached in (?P<reached>\d+/\d+) seeds"
               r".*?^final best, mean over seeds: random (?P<random>[\d.]+), ours (?P<ours>[\d.]+)",
     "template": "TPE + Hyperband reached random's best with {median} of random's epochs (median; {reached} seeds); "
                 "final best {ours} vs {random}",
     "goal": GOAL},
    {"name": "bench-storage, 8 workers", "title": r"^bench-storage:", "part": r"^journal: 10,000 trials, 8 workers",
     "figure": r"^journal: 10,000 trials, 8 workers x \d+ cycles: ask p50 [\d.]+ ms, p95 (?P<ask>[\d.]+) ms; "
               r"tell p50 [\d.]+ ms, p95 (?P<tell>[\d.]+) ms"
               r".*?^journal: throughput, 2 worker\(s\)[^\n]*? (?P<linear>[\d.]+x) of linear",
     "template": "journal at 10,000 trials: ask p95 {ask} ms, tell p95 {tell} ms; 2 workers {linear} of linear",
     "goal": r"^goals: ([^\n]+)"},
    {"name": "bench-storage, 32 workers", "title": r"^bench-storage:",
     "part": r"^journal: \d+ workers x \d+ cycles, all open first",
     "figure": r"^journal: filled to (?P<trials>[\d,]+) trials"
               r".*?^journal: (?P<workers>\d+) workers x \d+ cycles, all open first[^:\n]*: ask[^\n]*? "
               r"p95 (?P<ask>[\d.]+) ms; tell p50 [\d.]+ ms, p95 (?P<tell>[\d.]+) ms; "
               r"[^\n]*?all at once: (?P<start>[\d.]+ s) \(median\)",
     "template": "journal, {workers} workers at {trials} trials: ask p95 {ask} ms, tell p95 {tell} ms; "
                 "all open at once in {start} (median)",
     "goal": r"^goals: ([^;\n]+)"},
    {"name": "bench-storage, opening", "title": r"^bench-storage:",
     "part": r"^journal: [\d,]+ trials, from the snapshot",
     "figure": r".*^journal: (?P<trials>[\d,]+) trials, full replay: open \+ load \+ first ask (?P<replay>[\d.]+ s)"
               r"[^\n]*peak RSS (?P<replay_rss>[\d,]+ MB)[^\n]*\njournal: (?P=trials) trials, from the snapshot: "
               r"open \+ load \+ first ask (?P<snapshot>[\d.]+ s)[^\n]*peak RSS (?P<rss>[\d,]+ MB)",
     "template": "journal of {trials} trials opens in {snapshot} from its snapshot, {replay} by full replay; "
                 "peak RSS {rss} vs {replay_rss}"},
    {"name": "bench-decode", "title": r"^bench-decode:",
     "figure": r"^(?P<images>[\d,]+) (?P<size>\d+x\d+)x3 JPGs.*?^decode \+ cache[^\n]*?\((?P<rate>[\d,]+ images/s)\)"
               r".*?^peak RSS[^\n]*?= (?P<ratio>[\d.]+x) the arrays",
     "template": "{images} {size} JPGs at {rate}; peak RSS {ratio} the decoded arrays",
     "goal": r"^peak RSS[^\n]*\(goal: ([^:;)\n]+)"},
    {"name": "bench-decode, packed workers", "title": r"^bench-decode:.*packed workers",
     "figure": r"^(?P<images>[\d,]+) (?P<size>\d+x\d+)x3 JPGs.*?"
               r"^  INPUT_PIPELINE=stream: (?P<workers>\d+) workers hold (?P<stream>[\d.]+x) one copy.*?"
               r"^  INPUT_PIPELINE=arrays: \d+ workers hold (?P<arrays>[\d.]+x) one copy",
     "template": "{workers} workers training on {images} {size} images hold {stream} one copy of them streamed "
                 "from the shared cache ({arrays} copied into each)",
     "goal": r"^  INPUT_PIPELINE=stream:[^\n]*\(goal: ([^:;)\n]+)"},
    {"name": "bench-breakdown", "title": r"^bench-breakdown:", "figure": breakdown_figure},
    {"name": "bench-gpu", "title": r"^bench-gpu:", "figure": gpu_figure},
    {"name": "bench-pareto", "title": r"^bench-pareto:",
     "figure": r"^  pruned / not pruned: (?P<ratio>[\d.]+x) the epochs \(mean of seeds\); Pareto front's best "
               r"accuracy (?P<delta>[+-][\d.]+) \(mean difference\)",
     "template": "a two-objective study pruned on its first objective: {ratio} the epochs, Pareto front's best "
                 "accuracy {delta}",
     "fixed_goal": "fewer epochs, the front's best accuracy kept"},
    {"name": "bench-confirm", "title": r"^bench-confirm:",
     "figure": r"^  mean test accuracy: top-1 (?P<top1>[\d.]+), top-(?P<k>\d+) confirmed (?P<topk>[\d.]+) "
               r"\((?P<delta>[+-][\d.]+)\); the confirmation's wall time (?P<wall>\d+ s) against (?P<one>\d+ s) "
               r"for the top-1's evaluation \((?P<ratio>[\d.]+x)\)",
     "template": "fc_head quick: test accuracy of the top-1 pick {top1}, of the top-{k} confirmed {topk} ({delta}); "
                 "confirming took {wall} against {one} ({ratio})",
     "fixed_goal": "the confirmed pick tests at least as well as the top-1"},
    {"name": "bench-recipe", "title": r"^bench-recipe:",
     "figure": r"^simple_cnn [^\n]*?, (?P<epochs>\d+) epochs each.*?^  modern - seed: (?P<delta>[+-][\d.]+) best "
               r"validation accuracy \(mean of seeds\) at (?P<ratio>[\d.]+x) the time an epoch",
     "template": "simple_cnn, full CIFAR-10, {epochs} epochs: cosine + warm-up + label smoothing + RandAugment "
                 "{delta} best validation accuracy against seed 001's recipe, at {ratio} the time an epoch",
     "fixed_goal": "a measured trade, no target"},
    {"name": "bench-finetune", "title": r"^bench-finetune:",
     "figure": r"^  mean: head search alone (?P<head>[\d.]+) in (?P<head_s>\d+ s); \+ fine-tuning (?P<all>[\d.]+) in "
               r"(?P<all_s>\d+ s) \((?P<delta>[+-][\d.]+) best validation accuracy at (?P<ratio>[\d.]+x) the "
               r"wall time\)",
     "template": "fc_head_ft quick: head search alone {head} in {head_s}; + fine-tuning its 5 best {all} in {all_s} "
                 "({delta} at {ratio} the wall time)",
     "fixed_goal": "a measured trade, no target"},
    {"name": "bench-outage", "title": r"^bench-outage:",
     "figure": r"^  summary: (?P<reaped>\d+) trials reaped, (?P<given>\d+) lineages given up, budget met in "
               r"(?P<met>\d+) of (?P<runs>\d+) runs \(longest outage (?P<longest>\d+ s)",
     "template": "PostgreSQL stopped twice a run for 0.5x-5x the grace period (up to {longest}): {reaped} trials "
                 "reaped, {given} lineages given up, budget met in {met} of {runs} runs",
     "fixed_goal": "no trial reaped or lineage given up for an outage; every budget met"},
    {"name": "the main job on the CPU (by hand)", "title": r"^the main job, make study NAME=fc_head PROFILE=quick",
     "figure": r"^end to end \(make study\):[^\n]*?(?P<after>\d+:\d\d)(?: \(goal[^)\n]*\))? -- met"
               r".*?^test accuracy \(evaluated once\): (?P<test>[\d.]+)",
     "template": "make study NAME=fc_head PROFILE=quick in {after} end to end; test accuracy {test} after make evaluate",
     "goal": GOAL},
    {"name": "fc_head, 100 trials on the CPU (by hand)", "title": r"^fc_head, 100",
     "figure": r"^trial time, first start to last finish[^\n]*?:\s+(?P<time>[\d.]+ min) for (?P<trials>\d+) trials"
               r".*?^peak resident memory, largest process[^\n]*?= (?P<rss>[\d.]+ GiB)"
               r".*?^test accuracy \(evaluated once\): (?P<test>[\d.]+)",
     "template": "{trials} trials in {time}; largest process {rss}; the winner's test accuracy {test}",
     "goal": GOAL},
    {"name": "fc_head on a GPU (by hand)", "title": r"^fc_head on one ",
     "figure": r"(?P<done>\d+) of (?P<budget>\d+) finished in (?P<time>\d+ s)"
               r".*?^test accuracy \(evaluated once\): (?P<test>[\d.]+)",
     "template": "{done} of {budget} trials in {time}; the winner's test accuracy {test}",
     "fixed_goal": "100 in at most 20 min"},
    {"name": "WORKERS_PER_GPU=auto (device check)", "title": r"^WORKERS_PER_GPU=auto",
     "figure": r"= (?P<workers>\d+) workers per GPU \((?P<why>[^)\n]+)\).*?^trials: (?P<trials>\d+ of \d+) complete"
               r".*?^nvidia-smi: at most (?P<mib>[\d,]+) MiB",
     "template": "packed {workers} workers on the GPU ({why}); {trials} trials complete; at most {mib} MiB in use"},
)


def _chunks(text: str) -> Iterator[tuple[str, str]]:
    """(heading line, text under it) for each `## ` heading outside a fenced block."""
    heading: str | None = None
    body: list[str] = []
    fenced = False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            if heading is not None:
                yield heading, "".join(body)
            heading, body = line.rstrip(), []
        else:
            body.append(line)
    if heading is not None:
        yield heading, "".join(body)


def _section(heading: re.Match[str], body: str) -> Section:
    machine = re.search(r"^Machine:[ \t]*(.*?)\s*$", body, re.MULTILINE)
    return Section(heading["title"], heading["when"].split(",")[0].strip(), machine[1] if machine else "", body)


def parse_sections(text: str) -> list[Section]:
    """The log's dated `## TITLE (DATE...)` sections, in file order."""
    return [_section(match, body) for heading, body in _chunks(text) if (match := re.fullmatch(HEADING, heading))]


def matching(headline: Headline, sections: list[Section]) -> list[Section]:
    """The sections a headline's figure comes from, in file order."""
    part = headline.get("part")
    return [s for s in sections
            if re.search(headline["title"], s.title) and (part is None or re.search(part, s.body, FLAGS))]


def newest(headline: Headline, sections: list[Section]) -> Section | None:
    """The newest of a headline's sections: the latest day, and on one day the last in the file."""
    ranked = sorted(enumerate(matching(headline, sections)), key=lambda pair: (pair[1].date[:10], pair[0]))
    return ranked[-1][1] if ranked else None


def figure(headline: Headline, section: Section) -> str | None:
    """The headline figure in a section's text; None when the section does not have it."""
    find = headline["figure"]
    if callable(find):
        return find(section.body)
    match = re.search(find, section.body, FLAGS)
    return headline["template"].format_map(match.groupdict()) if match else None


def goal(headline: Headline, section: Section) -> str:
    """The goals the section prints for the figure, else the headline's fixed goal."""
    found = re.findall(headline["goal"], section.body, FLAGS) if "goal" in headline else []
    return "; ".join(dict.fromkeys(g.strip() for g in found)) or headline.get("fixed_goal", NO_GOAL)


def short_machine(machine: str) -> str:
    """ "1x H100" for a GPU machine, else e.g. "AMD EPYC, 2 cores, no GPU"; "—" for no Machine line."""
    gpu = re.search(r"(?:(\d+) ?x )?NVIDIA (?:GeForce )?(RTX ?\d+\w*|[A-Z]+\d+\w*)", machine)
    if gpu:
        return f"{gpu[1] or 1}x {gpu[2]}"
    cpu = " ".join(re.sub(r"\((?:R|TM)\)|\bProcessor\b|\d+-Core|\bCPU\b.*", "", machine.split(",")[0]).split())
    cores = re.search(r"(\d+) cores", machine)
    parts = (cpu, f"{cores[1]} cores" if cores else "", "no GPU" if "no GPU" in machine else "")
    return ", ".join(p for p in parts if p) or "—"


def _row(headline: Headline, sections: list[Section]) -> tuple[str, ...]:
    section = newest(headline, sections)
    if section is None:
        logger.warning("%s: no section matches %r", headline["name"], headline["title"])
        return headline["name"], NO_SECTION, headline.get("fixed_goal", NO_GOAL), "—", "—"
    found = figure(headline, section)
    if found is None:
        logger.warning("%s: its figure is not in the section of %s", headline["name"], section.date)
    return headline["name"], found or NOT_FOUND, goal(headline, section), section.date, short_machine(section.machine)


def _markdown_row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |"


def current_table(text: str) -> str:
    """The markdown table of the newest figure of each headline in the log `text` (no trailing newline)."""
    sections = parse_sections(text)
    rows = [HEADER, ("---",) * len(HEADER), *(_row(headline, sections) for headline in HEADLINES)]
    return "\n".join(_markdown_row(row) for row in rows)


def _block_span(text: str) -> tuple[int, int] | None:
    """Offsets just after BEGIN and at END; None when neither marker is there."""
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 and end < 0:
        return None
    if begin < 0 or end < begin:
        raise ValueError(f"expected {BEGIN} and then {END}, or neither")
    return begin + len(BEGIN), end


def read_block(text: str) -> str | None:
    """The table between the markers as written; None when there are no markers."""
    span = _block_span(text)
    return None if span is None else text[span[0]:span[1]].removeprefix("\n").removesuffix("\n")


def _after_first_paragraph(text: str) -> int:
    """Offset just after the first paragraph that is no heading, looking above the first `## ` heading only."""
    offset, in_paragraph = 0, False
    for line in text.splitlines(keepends=True):
        blank = not line.strip()
        if line.startswith("## ") or (in_paragraph and blank):
            break
        in_paragraph = in_paragraph or not (blank or line.startswith("#"))
        offset += len(line)
    return offset


def with_current_table(text: str) -> str:
    """`text` with a current table between the markers, inserted after the first paragraph if they are absent."""
    table = current_table(text)
    span = _block_span(text)
    if span is not None:
        return f"{text[:span[0]]}\n{table}\n{text[span[1]:]}"
    at = _after_first_paragraph(text)
    return f"{text[:at]}\n{BEGIN}\n{table}\n{END}\n{text[at:]}"


def _read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:  # newline="": no translation, the bytes stay as they are
        return f.read()


def update(path: str | os.PathLike[str]) -> bool:
    """Bring the current-figures table of the log at `path` up to date; True if the file changed."""
    target = Path(path)
    text = _read(target)
    new = with_current_table(text)
    if new == text:
        logger.info("%s: the current figures were current", target)
        return False
    with open(target, "w", encoding="utf-8", newline="") as f:
        f.write(new)
    logger.info("%s: current figures updated", target)
    return True


def _check(path: Path) -> int:
    text = _read(path)
    new = with_current_table(text)
    if new == text:
        print(f"{path}: the current-figures table is current")
        return 0
    print(f"{path}: the current-figures table is stale; run `python -m benchmarks.current --path {path}`")
    print("\n".join(difflib.unified_diff(text.splitlines(), new.splitlines(), str(path), "regenerated",
                                         n=0, lineterm="")))
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.current", description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default=DEFAULT_PATH, help="the benchmark log (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the table is stale")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.check:
        return _check(Path(args.path))
    print(f"{args.path}: {'current figures updated' if update(args.path) else 'the current figures were current'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
