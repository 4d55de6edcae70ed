"""`cora experiment CONFIG.yaml`: a list of rows (CF model or LLM method + options) on one
dataset / backbone / budget, run one after another into one folder, then one results table and
the paper's plots.

Resumable by construction: every row is its own run folder; a finished row (trained and
evaluated on the experiment's test key) is skipped, an interrupted one resumes from its last
checkpoint. A failing row is reported and the others still run.

The modules, in the order a run goes through them:

- :mod:`.spec`: the experiment file (its YAML reference), checked, with one :class:`~.spec.Row`
  per row;
- :mod:`.plan`: every training of the file (a CF model, one seed of a row) resolved once into a
  :class:`~.plan.Training`: run folder, config, name, what it reads;
- :mod:`.execute`: running the trainings one after another (and the ``cora experiment`` command);
- :mod:`.parallel`: running them in worker processes (``--jobs N``);
- :mod:`.status`: where each training stands (``--status``);
- :mod:`.carry`: finished trainings carried across machines in the committed results;
- :mod:`.results`: results.md / results.json / predictions / plots.
"""
