"""Markdown tables of evaluation results, model next to its trivial baselines."""

import numbers

HIGHER_IS_BETTER = {
    "abs_rel": False, "delta1": True, "rmse": False,
    "epe": False, "outliers_3px": False, "fl_kitti": False,
    "miou": True, "mask_map": True, "mask_ap50": True, "mask_ap75": True,
    "pck": True, "temporal_flickering": True,
}
"""Direction of every metric the eval package returns; the table marks it with an arrow."""


def format_markdown_table(results: dict, digits: int = 4) -> str:
  """Renders results as a markdown table, one row per (section, metric).

  Args:
    results: {section: {"model": {metric: float}, "baselines": {name: {metric: float}}}}, where
      a section is a modality or "rgb"; "baselines" is optional (e.g. the output of
      baselines.baseline_metrics). Sections and metrics keep their insertion order.
    digits: decimals shown.

  Returns:
    Markdown text:
      | section | metric | model | baselines |
      |---|---|---|---|
      | depth | abs_rel ↓ | 0.1234 | constant_disparity 0.4567 |
  """
  lines = ["| section | metric | model | baselines |", "|---|---|---|---|"]
  for section, entry in results.items():
    if not isinstance(entry, dict) or "model" not in entry:
      raise ValueError(f"results[{section!r}] must be a dict with a 'model' metrics dict and "
                       f"optional 'baselines', got {entry!r}")
    baselines = entry.get("baselines", {})
    for metric, value in entry["model"].items():
      arrow = {True: " ↑", False: " ↓"}.get(HIGHER_IS_BETTER.get(metric), "")
      baseline_cells = [f"{name} {_number(scores[metric], digits)}"
                        for name, scores in baselines.items() if metric in scores]
      lines.append(f"| {section} | {metric}{arrow} | {_number(value, digits)} | "
                   f"{'; '.join(baseline_cells) or '–'} |")
  return "\n".join(lines) + "\n"


def _number(value, digits: int) -> str:
  if value is None:   # a metric with no finite value (JSON null): shown as missing, not 0
    return "–"
  if not isinstance(value, numbers.Real):
    raise ValueError(f"metric values must be numbers, got {value!r}")
  return f"{float(value):.{digits}f}"
