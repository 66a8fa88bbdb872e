"""What the HTML reports share: the curation run's (``report.html``) and the evaluation's (``evaluation.html``).

- :func:`page`, the page shell and its style; :func:`table`, an HTML table from a pandas frame (every cell
  escaped: texts in the tables are data, model output included); :func:`empty`, the one line that stands in
  for a section with nothing to show, saying why.
- :func:`integer_axis`, for axes that count rounds or documents: matplotlib's default locator would tick
  0.0, 0.2, ... between two rounds.
- :func:`markdown_html`, the small Markdown subset that ``evaluation.md`` is written in (headings,
  paragraphs, pipe tables, images, bold, italics, code), so the evaluation reads in a browser too.
- :func:`write_pages`, which writes a page twice: ``NAME.html`` beside its PNG figures, and
  ``NAME-standalone.html`` with every figure inlined as a ``data:`` URI, one file to mail or attach to an
  MLflow run without its folder.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1em;color:#222;"
    "line-height:1.4}"
    "h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:2px solid #ccc}h3{margin-top:1.4em}"
    "nav{font-size:14px;margin:.5em 0 1em}nav a{margin-right:1.2em}"
    ".meta{color:#555;font-size:14px}.empty{color:#555;font-style:italic}"
    ".wide{overflow-x:auto}table.t{border-collapse:collapse;font-size:13px;margin:.4em 0}"
    ".t td,.t th{padding:3px 8px;border-bottom:1px solid #ddd;vertical-align:top;text-align:left}"
    ".t th{background:#f3f3f3}.t td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".t td.text{white-space:pre-wrap;max-width:420px;font-size:12.5px}.t tr.sub td:first-child{padding-left:2em}"
    ".t tr.total td{font-weight:bold}.t td.nw{white-space:nowrap}"
    "img{max-width:100%;margin:4px 0}.figs{display:flex;flex-wrap:wrap;gap:8px}.figs img{max-width:49%}"
)


def esc(text) -> str:
    """``text`` escaped for HTML; None and NaN as an empty string."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    return html.escape(str(text))


def clip(text, limit: int) -> str:
    """``text`` with its whitespace collapsed, cut to ``limit`` characters (an ellipsis marks the cut), escaped."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    t = " ".join(str(text).split())
    return esc(t if len(t) <= limit else t[: limit - 1] + "…")


def _number(v, digits: int) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.{digits}f}"
    return str(v)


def table(df, headers: dict[str, str] | None = None, text: tuple[str, ...] = (), digits: int = 3,
          raw: tuple[str, ...] = (), nowrap: tuple[str, ...] = ()) -> str:
    """``df`` as an HTML table, one row per row, escaped.

    ``headers`` renames columns (and, when given, picks and orders them); columns in ``text`` are long texts
    (wrapped, whitespace kept); numbers are right-aligned, floats with ``digits`` decimals; columns in ``raw``
    hold HTML the caller built (and escaped) itself; columns in ``nowrap`` are not broken across lines.
    """
    import numpy as np

    cols = list(headers) if headers else list(df.columns)
    names = headers or {c: c for c in cols}
    out = ["<div class='wide'><table class='t'><thead><tr>", *(f"<th>{esc(names[c])}</th>" for c in cols),
           "</tr></thead><tbody>"]
    for row in df[cols].itertuples(index=False):
        out.append("<tr>")
        for c, v in zip(cols, row):
            if isinstance(v, np.generic):
                v = v.item()
            if c in raw:
                out.append(f"<td>{v or ''}</td>")
            elif c in text:
                out.append(f"<td class='text'>{esc(v)}</td>")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append(f"<td class='n'>{_number(v, digits)}</td>")
            else:
                cls = " class='nw'" if c in nowrap else ""
                out.append(f"<td{cls}>{esc(_number(v, digits) if isinstance(v, bool) else v)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def empty(reason: str) -> str:
    """The one line that stands in for a section with nothing to show: ``reason`` says why."""
    return f"<p class='empty'>{esc(reason)}</p>"


def page(title: str, body: list[str], nav: list[tuple[str, str]] = ()) -> str:
    """A whole HTML page: ``title``, an optional row of links to sections (``(anchor, label)``), then ``body``."""
    links = ("<nav>" + "".join(f"<a href='#{esc(a)}'>{esc(label)}</a>" for a, label in nav) + "</nav>") if nav else ""
    return "\n".join([
        "<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>", links, *body, "</body></html>", ""])


def integer_axis(ax, *which: str) -> None:
    """Tick the named axes (``"x"``, ``"y"``) at whole numbers only: rounds and documents come in ones."""
    from matplotlib.ticker import MaxNLocator

    for name in which:
        getattr(ax, f"{name}axis").set_major_locator(MaxNLocator(integer=True))


_IMG_SRC = re.compile(r"""(<img\b[^>]*?\bsrc=)(['"])([^'"]+)\2""", re.IGNORECASE)


def page_files(page: Path | str) -> list[Path]:
    """A page written by :func:`write_pages` (``NAME.html``, or the ``NAME.md`` it was made from) and what
    belongs to it: the page, its standalone copy, the Markdown, the images the page shows, those that
    exist. Other pages' files in the same folder (the evaluation's beside the curation's) are not among them."""
    page = Path(page)
    folder, name = page.parent, page.stem
    page = folder / f"{name}.html"
    own = [page, folder / f"{name}-standalone.html", folder / f"{name}.md"]
    text = page.read_text(encoding="utf-8") if page.is_file() else ""
    own += [folder / html.unescape(m.group(3)) for m in _IMG_SRC.finditer(text)
            if not m.group(3).startswith("data:") and "://" not in m.group(3)]
    return [p for p in dict.fromkeys(own) if p.is_file()]


def inline_images(page_html: str, folder: Path) -> str:
    """``page_html`` with every ``<img src>`` that names a PNG file in ``folder`` replaced by its bytes as a
    ``data:`` URI; an image that is missing raises, so a self-contained page never ships a broken one."""
    def repl(m):
        src = m.group(3)
        if src.startswith("data:") or "://" in src:
            return m.group(0)
        path = folder / html.unescape(src)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"{m.group(1)}{m.group(2)}data:image/png;base64,{data}{m.group(2)}"

    return _IMG_SRC.sub(repl, page_html)


def write_pages(page_html: str, folder: Path, name: str, standalone: bool = True) -> Path:
    """Write ``NAME.html`` into ``folder`` (its figures beside it) and, with ``standalone``,
    ``NAME-standalone.html`` with the figures inlined; returns the first one's path."""
    path = folder / f"{name}.html"
    path.write_text(page_html, encoding="utf-8")
    alone = folder / f"{name}-standalone.html"
    if standalone:
        alone.write_text(inline_images(page_html, folder), encoding="utf-8")
    elif alone.exists():
        alone.unlink()  # a stale copy would disagree with the page just written
    return path


# ------------------------------------------------------------------ Markdown (the evaluation's subset)
_INLINE = [
    (re.compile(r"\*\*(.+?)\*\*"), r"<b>\1</b>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<i>\1</i>"),
]


_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")  # a backslash before ASCII punctuation: that character, literally


def _inline(text: str) -> str:
    """One line of Markdown text as HTML. Entities stay entities (``&amp;`` in the source is ``&``) and a
    backslash before punctuation is the character itself (``\\|`` is ``|``), as in CommonMark; everything
    else is escaped, so no tag in the source reaches the page."""
    parts = text.split("`")
    out = []
    for i, part in enumerate(parts):
        s = html.escape(html.unescape(part), quote=False)
        if i % 2 and i < len(parts) - 1:
            out.append(f"<code>{s}</code>")
            continue
        if i % 2:  # an unpaired backtick
            s = "`" + s
        s = _ESCAPED.sub(r"\1", s)
        for pattern, sub in _INLINE:
            s = pattern.sub(sub, s)
        out.append(s)
    return "".join(out)


def _cells(line: str) -> list[str]:
    """The cells of a pipe-table row: split on bars, except escaped ones (``\\|``)."""
    s = line.strip()
    s = s[1:] if s.startswith("|") else s
    s = s[:-1] if s.endswith("|") and not s.endswith("\\|") else s
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s)]


_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")


def slug(text: str) -> str:
    """A heading's anchor: lower case, runs of other characters as one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def markdown_html(text: str) -> str:
    """The Markdown subset ``evaluation.md`` uses, as HTML: ``#``-headings (with anchors), paragraphs, pipe
    tables (a header row, a ``|---|`` row, body rows; ``\\|`` is a literal bar), an image alone on a line,
    ``**bold**``, ``*italics*`` and ``code``."""
    lines = text.splitlines()
    out, para, i = [], [], 0

    def flush():
        if para:
            out.append("<p>" + " ".join(_inline(p) for p in para) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i].rstrip()
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        image = _IMAGE.match(line.strip())
        if not line.strip():
            flush()
        elif heading:
            flush()
            level, title = len(heading.group(1)), heading.group(2)
            out.append(f"<h{level} id='{slug(html.unescape(title))}'>{_inline(title)}</h{level}>")
        elif image:
            flush()
            out.append(f"<img src='{esc(image.group(2))}' alt='{esc(image.group(1))}'>")
        elif line.startswith("|") and i + 1 < len(lines) and _RULE.match(lines[i + 1].strip()):
            flush()
            head = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
            out.append("<div class='wide'><table class='t'><thead><tr>"
                       + "".join(f"<th>{_inline(h)}</th>" for h in head) + f"</tr></thead><tbody>{body}</tbody></table></div>")
            continue
        else:
            para.append(line.strip())
        i += 1
    flush()
    return "\n".join(out)
