"""Every training of an experiment, resolved once: what the sequential run, ``--jobs``,
``--status`` and the results writer all go through.

A training is one run folder: a CF model (``cf:KEY``, the run its rows read), or one seed of a
row (a CF row's training is its CF model's run, named after the row). Each is a
:class:`Training`, built once per experiment (``Experiment.plan``) with its run folder, its
resolved config, its one name and the trainings it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cora.config import CFConfig, LLMConfig


ROW_KEYS = {"name", "cf", "method", "label", "stage_from", "seeds", "carry"}


@dataclass
class Row:
    """One row of the table, as the experiment file gives it (checked by :meth:`Experiment.validate`)."""

    name: str
    index: int                      # its place in the file: the table's order, its predictions files' order
    method: str | None = None       # the LLM method; None: a CF row (the CF run its LLM rows read)
    cf: str | None = None           # a key of the experiment's `cf`: a CF row's model, an LLM row's CF input
    label: str | None = None        # how the plots name it (default: its name)
    stage_from: dict[str, str] = field(default_factory=dict)  # stage -> the earlier row it is taken from
    seeds: list[int] | None = None  # trained once per seed; None: once, with the config's seed
    settings: dict = field(default_factory=dict)  # its LLMConfig fields, over the experiment's `llm`
    # {from: RESULTS_FOLDER, training: NAME}: never trained here; its one training is the committed
    # training NAME of another experiment's results (same test sample, same settings), e.g. Table 4's
    # qkvo row = ml1m-cpu's "CoRA-MF seed 1".
    carry: dict | None = None

    @classmethod
    def from_mapping(cls, index: int, d: dict) -> Row:
        """The row of a mapping of the file, as it is: :meth:`Experiment.validate` checks it."""
        return cls(name=d["name"], index=index, method=d.get("method"), cf=d.get("cf"),
                   label=d.get("label", d["name"]), stage_from=d.get("stage_from") or {},
                   seeds=d.get("seeds"), carry=d.get("carry"),
                   settings={k: v for k, v in d.items() if k not in ROW_KEYS})


@dataclass(eq=False)
class Training:
    """One training: a CF model (``row`` None), or one seed of a row."""

    name: str                       # in results.json (runs, curves) and --status: "CoRA-MF", "CoLLM-MF seed 2", "cf:mf"
    run: Path                       # its run folder
    config: LLMConfig | CFConfig    # what it runs with
    row: Row | None = None          # None: a CF model
    seed: int | None = None         # the seed of a seeded row's training
    cf: str | None = None           # a CF model's key; a row's CF model (a CF row's own, an LLM row's input)
    stage_from: dict[str, Training] = field(default_factory=dict)  # stage -> the donor training it is taken from
    needs: list[Training] = field(default_factory=list)  # what must finish before it starts: its CF model, donors

    @property
    def task(self) -> str:
        """Its name as a ``--jobs`` worker's ``--task`` (and log file): 'cf:KEY' (a CF model, and
        a CF row, whose training is its CF model's), 'ROW' or 'ROW#SEED'."""
        if self.row is None or self.row.method is None:
            return f"cf:{self.cf}"
        return self.row.name + ("" if self.seed is None else f"#{self.seed}")


class Plan:
    """The trainings of an experiment in the file's order: ``cf_models`` by key, ``trainings``
    row by row (a seeded row's in the order of its seeds)."""

    def __init__(self, exp):  # a validated cora.experiment.spec.Experiment
        self.cf_models = {key: Training(f"cf:{key}", exp.cf_dir(key), exp.cf_config(key), cf=key) for key in exp.cf}
        self.trainings: list[Training] = []
        self._rows = exp.rows
        self._of_row: dict[str, list[Training]] = {}
        for row in exp.rows:
            own = []
            for seed in row.seeds or [None]:
                name = row.name + ("" if seed is None else f" seed {seed}")
                if row.method is None:  # the CF model's run, reported under the row's name
                    own.append(Training(name, exp.run_dir(row), self.cf_models[row.cf].config, row, cf=row.cf))
                    continue
                # A seeded donor gives the run of this seed (validate made sure it has it).
                donors = {stage: self.training(donor, seed if exp.row(donor).seeds else None)
                          for stage, donor in row.stage_from.items()}
                needs = ([self.cf_models[row.cf]] if row.cf else []) + list(donors.values())
                own.append(Training(name, exp.run_dir(row, seed), exp.config(row, seed), row, seed, row.cf,
                                    donors, needs))
            self._of_row[row.name] = own
            self.trainings += own

    def of(self, row: Row) -> list[Training]:
        """The row's trainings: one, or one per seed."""
        return self._of_row[row.name]

    def training(self, row_name: str, seed: int | None = None) -> Training:
        return next(t for t in self._of_row[row_name] if t.seed == seed)

    def needed(self, only: list[str] | None = None) -> list[Training]:
        """The trainings of the rows in ``only`` (default: all) and, transitively, the CF models
        and stage donors they read, each once (a CF row as its CF model), in the file's order:
        the order ready ``--jobs`` tasks start in."""
        by_task: dict[str, Training] = {}  # every training of the file, in its order
        for row in self._rows:
            if row.cf:
                by_task.setdefault(f"cf:{row.cf}", self.cf_models[row.cf])
            for t in self.of(row) if row.method is not None else []:
                by_task[t.task] = t
        # The wanted rows' own trainings, then whatever they need, transitively.
        wanted = set(only or [r.name for r in self._rows])
        chosen = {f"cf:{r.cf}" for r in self._rows if r.name in wanted and r.method is None}
        chosen |= {t.task for r in self._rows if r.name in wanted and r.method is not None for t in self.of(r)}
        todo = list(chosen)
        while todo:
            for need in by_task[todo.pop()].needs:
                if need.task not in chosen:
                    chosen.add(need.task)
                    todo.append(need.task)
        return [t for task, t in by_task.items() if task in chosen]
