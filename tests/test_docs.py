"""The repository's docs are self-contained: no pointers to design notes that are not in it, and
every relative markdown link in README.md and docs/ reaches a file of the repository."""

import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Planning notes that lived outside the repository; the facts they held are in docs/ now.
EXTERNAL_NOTES = re.compile(r"\b(DESIGN|ENVIRONMENT|STYLE)\.md\b|(^|[\s(`'\"]|\.\./)shared/")
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _repository_files(*suffixes: str) -> list[pathlib.Path]:
  """Tracked and new (not ignored) files, so .venv, caches and runs are never scanned."""
  listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
  return [ROOT / name for name in listed
          if name.endswith(suffixes) and (ROOT / name).is_file()]


def test_no_pointers_to_notes_outside_the_repository():
  this_file = pathlib.Path(__file__).resolve()
  hits = []
  for path in _repository_files(".py", ".md", ".sh"):
    if path == this_file:
      continue
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
      if EXTERNAL_NOTES.search(line):
        hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
  assert not hits, "pointers to files outside the repository:\n" + "\n".join(hits)


def test_relative_markdown_links_resolve():
  docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
  broken = []
  for doc in docs:
    for target in MARKDOWN_LINK.findall(doc.read_text()):
      if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
        continue  # web addresses and anchors within the page
      if not (doc.parent / target.split("#")[0]).exists():
        broken.append(f"{doc.relative_to(ROOT)}: {target}")
  assert not broken, "links to missing files:\n" + "\n".join(broken)
  assert len(docs) > 3
