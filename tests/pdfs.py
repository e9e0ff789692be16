"""Real PDF files for tests, written byte by byte: pages of text lines, or of an image only (a scan).

Text is shown with a Type0 font in Identity-H encoding (two bytes a character, the code point) and a ToUnicode
map that sends each code to the same code point, so any Basic Multilingual Plane text (accents, CJK) round-trips
through a PDF text extractor with no font file on the machine. Encryption is added with pypdf's writer.
"""

from __future__ import annotations

import io
import textwrap
import zlib


def to_unicode(chars: set[str], every_code: bool = False) -> bytes:
    """A ToUnicode CMap sending each character's code (its code point) to itself: only the ones used, since
    a reader builds a table of every entry for every page; ``every_code``: all 65536 (slow to read)."""
    codes = sorted(f"{ord(c):04x}" for c in chars)
    blocks = [codes[i: i + 100] for i in range(0, len(codes), 100)]  # at most 100 entries a block
    maps = "".join(f"{len(b)} beginbfchar\n" + "".join(f"<{c}> <{c}>\n" for c in b) + "endbfchar\n" for b in blocks)
    if every_code:
        maps = "1 beginbfrange\n<0000> <FFFF> <0000>\nendbfrange\n"
    return ("/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
            "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
            "/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n"
            "1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n" + maps +
            "endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n").encode()


def wrap(text: str, width: int = 90) -> list[str]:
    """A paragraph as the lines of a page."""
    return textwrap.wrap(text, width)


def _stream(data: bytes, extra: str = "") -> bytes:
    return f"<< /Length {len(data)}{extra} >>\nstream\n".encode() + data + b"\nendstream"


def _text_content(lines: list[str]) -> bytes:
    ops = ["BT", "/F1 10 Tf", "12 TL", "50 770 Td"]
    for line in lines:
        ops.append(f"<{line.encode('utf-16-be').hex()}> Tj T*")
    ops.append("ET")
    return "\n".join(ops).encode()


def build_pdf(pages: list[list[str] | None], slow: bool = False) -> bytes:
    """A PDF with one page per item: its lines of text, or None for a page that is only an image. ``slow``: its
    font maps every code, which pypdf rebuilds for each page (most of a second): for time limits."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, once the pages' numbers are known
        b"<< /Type /Font /Subtype /Type0 /BaseFont /TestSans /Encoding /Identity-H "
        b"/DescendantFonts [4 0 R] /ToUnicode 5 0 R >>",
        b"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /TestSans /CIDToGIDMap /Identity /DW 500 "
        b"/CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> >>",
        _stream(to_unicode({c for lines in pages for line in lines or [] for c in line}, every_code=slow)),
        _stream(bytes([0, 96, 160, 255] * 4), " /Type /XObject /Subtype /Image /Width 4 /Height 4 "
                "/ColorSpace /DeviceGray /BitsPerComponent 8"),
    ]
    kids = []
    for lines in pages:
        content = b"q 500 0 0 700 50 50 cm /Im1 Do Q" if lines is None else _text_content(lines)
        objects.append(_stream(content))
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects)} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> /XObject << /Im1 6 0 R >> >> >>".encode())
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>".encode()
    return assemble(objects)


def assemble(objects: list[bytes]) -> bytes:
    """A PDF of these objects (numbered from 1; the first is the catalog), with its cross-reference table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def encrypt(pdf: bytes, user_password: str, algorithm: str = "AES-256") -> bytes:
    """The same PDF, encrypted; an empty user password opens without one (only editing is restricted)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# -- hostile files (tests/unit/test_hostile_pdfs.py, tests/integration/test_documents.py) ---------------------

HELVETICA = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def _pages(contents: list[bytes]) -> bytes:
    """A PDF whose pages show these content streams (as they are: compressed ones carry their /Filter)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", HELVETICA]
    kids = []
    for content in contents:
        objects.append(content)
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects)} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>".encode())
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>".encode()
    return assemble(objects)


def compressed_text(chars: int) -> bytes:
    """A FlateDecode content stream that shows ``chars`` characters of text (a few KiB a million)."""
    line = b"(" + b"ab " * 30 + b") Tj T* "
    content = b"BT /F1 10 Tf 12 TL 50 770 Td " + line * (chars // 90 + 1) + b"ET"
    return _stream(zlib.compress(content, 9), " /Filter /FlateDecode")


def text_bomb(pages: int, chars_per_page: int) -> bytes:
    """A small file whose pages hold far more text than its size: highly compressible text streams."""
    return _pages([compressed_text(chars_per_page)] * pages)


def flate_bomb(expanded_bytes: int) -> bytes:
    """One page whose content stream is ``expanded_bytes`` of zeros compressed (about 1000:1)."""
    squeezer, parts = zlib.compressobj(1), []
    block = bytes(1 << 20)
    for _ in range(expanded_bytes >> 20):
        parts.append(squeezer.compress(block))
    parts.append(squeezer.flush())
    return _pages([_stream(b"".join(parts), " /Filter /FlateDecode")])


def nested_pdf(depth: int) -> bytes:
    """One page whose resources hold an array nested ``depth`` deep (a parser that recurses runs out of stack)."""
    deep = b"[" * depth + b"]" * depth
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
               _stream(b"BT /F1 10 Tf 50 770 Td (deep) Tj ET"),
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R /Resources << /Font << /F1 "
               b"5 0 R >> /Deep " + deep + b" >> >>", HELVETICA]
    return assemble(objects)


def nested_pages(depth: int) -> bytes:
    """A page tree ``depth`` nodes deep above its one page (a reader that walks it by recursion runs out)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    for _ in range(depth):
        number = len(objects) + 1
        objects.append(f"<< /Type /Pages /Kids [{number + 1} 0 R] /Count 1 >>".encode())
    objects.append(b"<< /Type /Page /MediaBox [0 0 612 792] >>")
    return assemble(objects)


def looped_pages() -> bytes:
    """A page tree whose node lists itself among its kids (a reader that follows it never ends)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"]
    return assemble(objects)
