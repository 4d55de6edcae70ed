"""``cora probe``: does a method leave the LLM's knowledge intact? (the paper's Fig. 1 claim).

The paper motivates CoRA by showing that TALLRec-style fine-tuning lowers the LLM's general and
recommendation knowledge, while CoRA leaves the backbone untouched (and *is* the backbone when
no pair is given). This package measures that offline, on multiple-choice questions built from
the dataset's own item metadata:

* :mod:`cora.probe.catalogue` - the items (title, genres) questions are built from;
* :mod:`cora.probe.questions` - the seeded questions (release year, genre, title matching);
  model-free;
* :mod:`cora.probe.scoring` - the total log-likelihood of each choice's text on a model;
* :mod:`cora.probe.rows` - the models compared (frozen backbone, each run's LLM, CoRA without
  and with a pair's weights);
* :mod:`cora.probe.report` - accuracy with a question bootstrap; table, plot and JSON.
"""
