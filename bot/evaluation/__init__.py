"""`parley eval`: the quality of each skill on the model actually configured.

Each skill runs over an evaluation set (JSONL, see bot.evaluation.sets and docs/evaluation.md)
through the real app, on a temporary SQLite database, and a table of figures is printed:
summarization (ROUGE-1/2/L), translation (BLEU, chrF), question answering (retrieval
recall@k, answers containing the reference fact, citation precision) and intent routing
(accuracy). Without a model the no-model paths are measured (extractive summaries, answers
quoted from the knowledge base, pattern routing) and model-only figures read "n/a".
"""

from bot.evaluation.cli import add_eval_parser

__all__ = ["add_eval_parser"]
