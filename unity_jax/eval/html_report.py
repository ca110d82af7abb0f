"""report.html: sample videos side by side, loss curves, metrics and baselines, config, fingerprint.

  entries = write_samples(result.samples, "runs/tiny/report_files/samples")   # mp4 + gif + png
  summary["samples"] = entries
  write_report("runs/tiny/report.html", summary, "runs/tiny")

The page is static HTML next to a `<stem>_files/` directory (loss-curve PNGs); sample files
are linked by relative paths, so the report directory can be copied or served as is. Every
video is an H.264 mp4 in a <video> tag; if the browser cannot play it, a small script swaps in
the animated GIF, and a link to a PNG frame sheet is always there. `#video-status` reports how
many videos loaded (`data-loaded`, `data-failed`, `data-total`), which headless tests read.
"""

import argparse
import html
import json
import math
import os
import sys

from unity_jax import io_utils
from unity_jax.eval import plots
from unity_jax.eval import report
from unity_jax.sample import video_io

SAMPLE_FPS = 4
"""Playback rate of the 5-frame demo clips (the synthetic world runs at 8 fps; slower reads
better when a clip is less than a second long)."""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f2f2f2; } td.num { text-align: right; font-family: monospace; }
tr.better td.model { background: #e3f4e3; } tr.worse td.model { background: #fbe5e5; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; padding: 8px; border: 1px solid #ddd; border-radius: 4px; }
figure video, figure img { display: block; image-rendering: pixelated; }
.curves img { width: 560px; image-rendering: auto; }
figcaption { font-size: 0.8em; max-width: 520px; margin-top: 4px; }
.check { font-weight: bold; } .met { color: #1a7f1a; } .missed { color: #b00; }
pre { background: #f6f6f6; padding: 8px; overflow: auto; max-height: 480px; font-size: 0.8em; }
#video-status { color: #666; font-size: 0.8em; }
"""

# Counts loaded / failed videos into #video-status and falls back to the GIF on failure.
_SCRIPT = """
(function () {
  const videos = Array.from(document.querySelectorAll('video'));
  const status = document.getElementById('video-status');
  let loaded = 0, failed = 0;
  function update() {
    status.dataset.total = videos.length; status.dataset.loaded = loaded;
    status.dataset.failed = failed;
    status.textContent = loaded + ' of ' + videos.length + ' videos loaded' +
        (failed ? ', ' + failed + ' shown as GIF (mp4 not playable here)' : '');
  }
  videos.forEach(function (video) {
    const done = function (ok) {
      if (video.dataset.counted) return;
      video.dataset.counted = '1';
      if (ok) { loaded++; } else {
        failed++;
        const img = document.createElement('img');
        img.src = video.dataset.fallback; img.width = video.width; img.alt = video.title;
        video.replaceWith(img);
      }
      update();
    };
    if (video.readyState >= 2) done(true);
    video.addEventListener('loadeddata', function () { done(true); });
    video.addEventListener('error', function () { done(false); });
  });
  update();
})();
"""


def write_samples(samples, directory: str) -> list[dict]:
  """Writes each unibench.Sample as .mp4, .gif and .png (frame sheet); returns JSON entries.

  Returns [{"task", "modality", "clip_id", "caption", "panels", "mp4", "gif", "png", "width",
  "height"}] with absolute file paths.
  """
  os.makedirs(directory, exist_ok=True)
  entries = []
  for sample in samples:
    name = f"{sample.task}_{sample.modality}_{sample.clip_id}".replace(os.sep, "_")
    stem = os.path.join(os.path.abspath(directory), name)
    files = {suffix: video_io.write_video(f"{stem}.{suffix}", sample.video, fps=SAMPLE_FPS)
             for suffix in ("mp4", "gif", "png")}
    entries.append(dict(task=sample.task, modality=sample.modality, clip_id=sample.clip_id,
                        caption=sample.caption, panels=list(sample.panels),
                        height=int(sample.video.shape[1]), width=int(sample.video.shape[2]),
                        **files))
  return entries


def _read_json(path: str):
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _number(value) -> str:
  if value is None:   # JSON null: no finite value
    return "–"
  return f"{value:.4f}" if isinstance(value, (int, float)) else html.escape(str(value))


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metrics_table(results: dict) -> str:
  """HTML table, one row per (section, metric): clips, model, and every baseline in one cell.

  A row is marked "better" when the model beats every baseline of that metric, "worse" when
  some baseline beats it (ties stay unmarked).
  """
  rows = ["<tr><th>section</th><th>metric</th><th>clips</th><th>model</th><th>baselines</th>"
          "</tr>"]
  for section, entry in results.items():
    baselines = entry.get("baselines", {})
    for metric, value in entry["model"].items():
      higher = report.HIGHER_IS_BETTER.get(metric)
      arrow = {True: " ↑", False: " ↓"}.get(higher, "")
      scores = {name: b[metric] for name, b in baselines.items() if metric in b}
      verdict = ""
      finite = [s for s in scores.values() if _finite(s)]
      if finite and higher is not None and _finite(value):
        best = max(finite) if higher else min(finite)
        margin = (value - best) if higher else (best - value)
        verdict = "better" if margin > 0 else "worse" if margin < 0 else ""
      cell = "<br>".join(f"{html.escape(name)} <code>{_number(score)}</code>"
                         for name, score in scores.items())
      rows.append(f'<tr class="{verdict}"><td>{html.escape(section)}</td>'
                  f"<td>{html.escape(metric)}{arrow}</td><td class=\"num\">"
                  f"{entry.get('clips', '')}</td><td class=\"num model\">{_number(value)}</td>"
                  f"<td>{cell or '–'}</td></tr>")
  return '<table id="metrics">\n' + "\n".join(rows) + "\n</table>"


def _headline(checks: dict) -> str:
  items = []
  for name, c in checks.items():
    if "target" in c:
      state = "met" if c["met"] else "missed"
      verdict = f'target {html.escape(c["target"])}: {"met" if c["met"] else "not met"}'
    else:   # reported beside its baseline, not gated (flow EPE, see unibench.headline)
      state, verdict = "reported", "reported, no target"
    items.append(f'<li class="check {state}">{html.escape(name)}: model {c["model"]:.4f} vs '
                 f'baseline {c["baseline"]:.4f}, ratio {c["ratio"]:.3f} ({verdict})</li>')
  return "<ul>" + "".join(items) + "</ul>" if items else ""


def _samples_html(samples: list[dict], report_dir: str) -> str:
  if not samples:
    return "<p>No sample videos (run unity-eval with --samples DIR).</p>"
  rel = lambda path: html.escape(os.path.relpath(path, report_dir))  # noqa: E731
  parts = []
  for task in dict.fromkeys(s["task"] for s in samples):
    figures = []
    for s in (s for s in samples if s["task"] == task):
      title = html.escape(f"{task} · {s['modality']}")
      width = s.get("width", 384)
      figures.append(
          f'<figure><video src="{rel(s["mp4"])}" data-fallback="{rel(s["gif"])}" '
          f'width="{width}" title="{title}" autoplay loop muted playsinline>'
          f'<img src="{rel(s["gif"])}" width="{width}" alt="{title}"></video>'
          f"<figcaption><b>{title}</b> — {' | '.join(html.escape(p) for p in s['panels'])}"
          f"<br>clip {html.escape(s['clip_id'])}: “{html.escape(s['caption'])}”<br>"
          f'<a href="{rel(s["gif"])}">GIF</a> · <a href="{rel(s["png"])}">frames (PNG)</a>'
          f"</figcaption></figure>")
    parts.append(f"<h3>{html.escape(task)}</h3>\n<div class=\"grid\">{''.join(figures)}</div>")
  return "\n".join(parts)


def write_report(path: str, summary: dict, workdir: str) -> str:
  """Writes the HTML report for a unity-eval `summary` of the run in `workdir`; returns path."""
  report_dir = os.path.dirname(os.path.abspath(path))
  assets = os.path.splitext(os.path.abspath(path))[0] + "_files"
  os.makedirs(assets, exist_ok=True)
  try:
    curves = plots.write_loss_curves(os.path.join(workdir, "metrics.jsonl"), assets)
  except FileNotFoundError:  # e.g. a workdir holding converted weights but no training log
    curves = []
  config = _read_json(os.path.join(workdir, "config.json"))
  fingerprint = summary.get("fingerprint") or _read_json(os.path.join(workdir, "summary.json"))
  settings = summary.get("settings", {})
  curve_html = "".join(
      f'<figure><img src="{html.escape(os.path.relpath(c["path"], report_dir))}" '
      f'alt="{html.escape(c["title"])}"><figcaption>{html.escape(c["title"])}</figcaption>'
      f"</figure>" for c in curves)
  fingerprint_rows = "".join(
      f"<tr><th>{html.escape(str(k))}</th>"
      f"<td><code>{html.escape(json.dumps(v))}</code></td></tr>"
      for k, v in (fingerprint or {}).items())
  body = f"""<h1>unity_jax run report: {html.escape(os.path.abspath(workdir))}</h1>
<p>Checkpoint step {summary.get('step')} ({html.escape(str(summary.get('weights')))} weights);
{summary.get('clips', {}).get('count')} UniBench-synth clips from
<code>{html.escape(str(summary.get('data')))}</code> ({html.escape(str(summary.get('split')))}
split); {settings.get('num_steps')} {html.escape(str(settings.get('solver')))} steps, guidance
{settings.get('guidance_scale')} for control and joint generation; sampling and scoring took
{sum(summary.get('seconds', {}).values()):.0f} s.</p>
{_headline(summary.get('headline', {}))}
<h2>Samples</h2>
<p>Each video shows its panels side by side (named above the frames and in the caption).
<span id="video-status">videos not checked (scripts disabled)</span></p>
{_samples_html(summary.get('samples', []), report_dir)}
<h2>Metrics (model next to trivial baselines)</h2>
<p>Per-clip metrics averaged over clips. Green: the model beats every baseline of that metric;
red: a baseline beats it. <code>real_video</code> is the flickering of the real eval clips.</p>
{metrics_table(summary.get('results', {}))}
<details><summary>Markdown</summary><pre>{html.escape(report.format_markdown_table(
    summary.get('results', {})))}</pre></details>
<h2>Loss curves</h2>
<div class="grid curves">{curve_html or "<p>No metrics.jsonl in the workdir.</p>"}</div>
<h2>Fingerprint</h2>
{('<table id="fingerprint">' + fingerprint_rows + '</table>') if fingerprint_rows
 else '<p>No summary.json: the run has not completed.</p>'}
<h2>Config</h2>
<pre id="config">{html.escape(json.dumps(config, indent=1) if config else "no config.json")}</pre>
"""
  page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<title>unity_jax report</title><style>{_CSS}</style></head>\n<body>\n{body}"
          f"<script>{_SCRIPT}</script>\n</body></html>\n")
  io_utils.atomic_write_text(path, page)
  return path


def main(argv=None) -> int:
  """python -m unity_jax.eval.html_report --eval EVAL.json --workdir RUN --out report.html"""
  parser = argparse.ArgumentParser(
      prog="python -m unity_jax.eval.html_report",
      description="Writes report.html from a unity-eval JSON (run with --samples for videos).")
  parser.add_argument("--eval", required=True, help="unity-eval --out JSON")
  parser.add_argument("--workdir", help="training run (default: the JSON's workdir)")
  parser.add_argument("--out", required=True, help="HTML file to write")
  args = parser.parse_args(argv)
  summary = _read_json(args.eval)
  if summary is None:
    print(f"html_report: {args.eval} does not exist", file=sys.stderr)
    return 2
  workdir = args.workdir or summary.get("workdir")
  if not workdir or not os.path.isdir(workdir):
    print(f"html_report: workdir {workdir!r} does not exist (pass --workdir)", file=sys.stderr)
    return 2
  print(write_report(args.out, summary, workdir))
  return 0


if __name__ == "__main__":
  sys.exit(main())
