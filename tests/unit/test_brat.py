from pathlib import Path

from clinie.brat import Document, GoldRelation, GoldSpan, parse_ann, read_corpus, read_document, write_document

TEXT = "Denies chest pain. Aspirin 81 mg daily."


def test_parse_spans_and_relations():
    ann = (
        "T1\tproblem 7 17\tchest pain\n"
        "T2\tnegation 0 6\tDenies\n"
        "T3\tdrug 19 26\tAspirin\n"
        "T4\tstrength 27 32\t81 mg\n"
        "R1\thasAttr Arg1:T1 Arg2:T2\n"
        "R2\thasTemporal Arg1:T3 Arg2:T4\n"
    )
    doc = parse_ann("n1", TEXT, ann)
    assert [(s.label, TEXT[s.start : s.end]) for s in doc.spans] == [
        ("problem", "chest pain"),
        ("negation", "Denies"),
        ("drug", "Aspirin"),
        ("strength", "81 mg"),
    ]
    assert [(r.entity, r.modifier) for r in doc.relations] == [("T1", "T2"), ("T3", "T4")]
    assert doc.issues == {}


def test_odd_lines_are_counted_not_fatal():
    ann = (
        "T1\tproblem 7 17\tchest pian\n"  # text copy differs: kept, counted
        "T2\tnonsense 0 6\tDenies\n"  # unknown label
        "T3\tnegation 0 3;4 6\tDen es\n"  # discontinuous: outer extent
        "T4\tproblem 5 999\tx\n"  # out of range
        "R1\thasAttr Arg1:T3 Arg2:T1\n"  # reversed arguments: normalised
        "R2\thasAttr Arg1:T1 Arg2:T9\n"  # missing span
        "R3\thasAttr Arg1:T1 Arg2:T1\n"  # problem-problem: not an allowed pair
        "#1\tAnnotatorNotes T1\tnote\n"
    )
    doc = parse_ann("n2", TEXT, ann)
    assert {s.id: (s.start, s.end) for s in doc.spans} == {"T1": (7, 17), "T3": (0, 6)}
    assert [(r.entity, r.modifier) for r in doc.relations] == [("T1", "T3")]
    assert doc.issues == {
        "span_text_mismatch": 1,
        "unknown_label": 1,
        "discontinuous_span_merged": 1,
        "offsets_out_of_range": 1,
        "relation_to_missing_span": 1,
        "relation_pair_not_allowed": 1,
        "ignored_line": 1,
    }


def test_write_then_read_round_trip(tmp_path: Path):
    text = "Line one\r\nCafé ≥ 5 mg 😀 denies pain.\n"
    start = text.index("pain")
    doc = Document(
        name="rt",
        text=text,
        spans=[
            GoldSpan(id="T1", label="problem", start=start, end=start + 4),
            GoldSpan(id="T2", label="negation", start=start - 7, end=start - 1),
        ],
        relations=[GoldRelation(entity="T1", modifier="T2")],
    )
    write_document(doc, tmp_path)
    back = read_document(tmp_path / "rt.txt")
    assert back.text == text  # CRLF and non-ASCII preserved byte for byte
    assert back.spans == doc.spans
    assert back.relations == doc.relations
    assert back.issues == {}


def test_shared_corpus_reads_cleanly(train_dir: Path):
    docs = read_corpus(train_dir)
    assert len(docs) == 96
    assert sum(len(d.relations) for d in docs) > 4500
    for d in docs:
        for s in d.spans:
            assert 0 <= s.start < s.end <= len(d.text)
