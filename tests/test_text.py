"""escape_md / md_table / md_code_block: hostile strings render as their literal text, checked
by rendering with markdown-it-py (CommonMark + GFM tables, raw HTML allowed as the worst case)."""
from __future__ import annotations

from html.parser import HTMLParser

import pytest

from pipelines.text import escape_md, md_code_block, md_table

markdown_it = pytest.importorskip("markdown_it")

HOSTILE = [
    "<img src=x onerror=alert(1)>|evil.png",
    "<script>alert('x')</script>",
    "a|b|c",
    "`code` and ``double``",
    "*bold* _em_ __strong__ ~~strike~~",
    "[link](javascript:alert(1)) ![img](http://x/y.png)",
    "# heading",
    "- bullet",
    "+ plus",
    "1. ordered",
    "7) ordered",
    "> quote",
    "=",
    "back\\slash\\|pipe",
    "&amp; &lt;b&gt; &#x27;",
    "line1\nline2\r\nline3",
    "my_photo_01.png",
    "snake_case_ and _leading",
    "<http://auto.link>",
    "日本語_ファイル.png",
    "",
]


class _Cells(HTMLParser):
    """Texts of <td>/<th> cells per <tr>, and every start tag seen."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows, self.tags, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _render(md: str) -> _Cells:
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    p = _Cells()
    p.feed(html)
    return p


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_cell_renders_as_literal_text(text):
    md = md_table([["item", "reason"], [text, "x"], ["ok.png", text]])
    parsed = _render(md)
    expected = " ".join(text.split("\n")).replace("\r", " ")
    assert parsed.rows == [["item", "reason"], [expected.strip(), "x"], ["ok.png", expected.strip()]]
    assert set(parsed.tags) <= {"table", "thead", "tbody", "tr", "th", "td"}  # no img/script/a/em/code


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_list_item_and_paragraph_render_as_literal_text(text):
    for md, wrapper in ((f"- {escape_md(text)}", {"ul", "li"}), (f"*Note: {escape_md(text)}*", {"p", "em"}),
                        (f"## {escape_md(text)}", {"h2"})):
        html = markdown_it.MarkdownIt("commonmark", {"html": True}).render(md)
        tags = []
        p = HTMLParser()
        p.handle_starttag = lambda tag, attrs: tags.append(tag)
        p.feed(html)
        assert set(tags) <= wrapper, (text, md, html)


def test_escape_md_examples():
    assert escape_md("<img src=x onerror=alert(1)>|evil.png") == r"&lt;img src=x onerror=alert(1)&gt;\|evil.png"
    assert escape_md("my_photo_1.png") == "my_photo_1.png"  # intraword "_" stays readable
    assert escape_md("12. x") == r"12\. x" and escape_md("2024.png") == "2024.png"
    assert escape_md("a\nb") == "a b" and escape_md(None) == "" and escape_md(3.5) == "3.5"
    assert escape_md("evil\u202egnp.exe") == "evil\ufffdgnp.exe"  # bidi override neutralised
    assert escape_md("bell\x07") == "bell\ufffd"


def test_md_table_rejects_ragged_rows():
    with pytest.raises(ValueError):
        md_table([["a", "b"], ["c"]])
    with pytest.raises(ValueError):
        md_table([])


@pytest.mark.parametrize("text", ["plain", "```\n</details>\n<img src=x>", "````` five", "a\n\n\nb"])
def test_code_block_is_verbatim(text):
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).render(
        "<details>\n\n" + md_code_block(text) + "\n\n</details>")
    import html as h
    inner = html.split("<pre><code>", 1)[1].split("</code></pre>", 1)[0]
    assert h.unescape(inner) == text + "\n"
    with pytest.raises(ValueError):
        md_code_block("x", info="py`")


def test_preview_alt_text_is_escaped():
    from pipelines.previews import markdown_image
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).render(markdown_image(b"\x89PNG", "x](javascript:1) <b>"))
    assert html.count("<img") == 1 and 'alt="x](javascript:1) &lt;b&gt;"' in html
    assert html.split('src="')[1].split('"')[0] == "data:image/png;base64,iVBORw=="
