"""What every notebook shares in presenting results, one module per idea; `kd.report.<name>` reaches all of it.

- rule: seed summaries, THE comparison rule (paired_comparison, comparison_sentence, paired_findings), intervals that
  never leave the metric's range, the resolution below which nothing is "clearly" different, and no verdict on a
  degenerate model (one that fails kdteach.groups.competence, the competence gate);
- files: tables, provenance (with the working tree's state) and result files.

Every experiment returns typed results (dataclasses of numbers), and each experiment module
(kdteach.experiments.<name>) holds the tables and sentences about its own results, typed by them. They choose every
verdict through this package's one rule, so a finding can never contradict its numbers, and they write their files
through write_report.
"""
from kdteach.report.files import (ALLOW_DIRTY_ENV, check_clean_tree, group_metrics_rows, markdown_table, provenance,
                                  to_jsonable, working_tree_changes, write_report)
from kdteach.report.rule import (CONFIDENCE, FRACTION, FRACTION_DIFFERENCE, MIN_SEEDS, RESOLUTION, UNBOUNDED,
                                 Comparison, SeedSummary, Verdict, comparison_sentence, mean_interval, mean_std,
                                 paired_comparison, paired_differences, paired_findings, per_seed, smoke_note,
                                 summarize_seeds, t_interval)

__all__ = [
    "ALLOW_DIRTY_ENV", "check_clean_tree", "group_metrics_rows", "markdown_table", "provenance", "to_jsonable",
    "working_tree_changes", "write_report",
    "CONFIDENCE", "FRACTION", "FRACTION_DIFFERENCE", "MIN_SEEDS", "RESOLUTION", "UNBOUNDED", "Comparison", "SeedSummary",
    "Verdict", "comparison_sentence", "mean_interval", "mean_std", "paired_comparison", "paired_differences",
    "paired_findings", "per_seed", "smoke_note", "summarize_seeds", "t_interval",
]
