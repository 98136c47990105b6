"""`dataset_edits` on sentence and tag captions: the edits it must produce (written out by hand) and, for any
captions hypothesis draws, the edits it must never produce."""
from hypothesis import given, settings, strategies as st

from caption_evaluator.captions.slots import dataset_edits

COLOURS, SHAPES, PLACES = ["red", "blue", "green"], ["circle", "square", "plus sign"], ["left", "right"]


def sentences():
    "Two patterns, every colour/shape/place in both: the slots are colour (two occurrences), shape and place."
    out = []
    for i, (c, s, p) in enumerate((c, s, p) for c in COLOURS for s in SHAPES for p in PLACES):
        bg = COLOURS[(COLOURS.index(c) + 1) % 3]
        out.append(f"a {c} {s} on a {bg} background at the {p}" if i // 2 % 2 else f"the {s} is {c}, {bg} background, on the {p} side")
    return out


def test_sentence_slots_and_every_occurrence():
    e = dataset_edits(sentences(), keep=["sks"])
    assert sorted(map(sorted, e.slots.values())) == sorted([sorted(COLOURS), sorted(PLACES), sorted(SHAPES)])
    got = sorted(c for c, _ in e("a red plus sign on a blue background at the left"))
    assert got == sorted(["a blue plus sign on a blue background at the left", "a green plus sign on a blue background at the left",
                          "a red plus sign on a red background at the left", "a red plus sign on a green background at the left",
                          "a red circle on a blue background at the left", "a red square on a blue background at the left",
                          "a red plus sign on a blue background at the right"])      # "plus sign" swapped whole, never "plus circle"


def test_synonyms_and_kept_words_are_never_swapped():
    e = dataset_edits(sentences(), synonyms=[["circle", "square"]], keep=["red"])
    got = [c for c, _ in e("a red circle on a blue background at the left")]
    assert "a red square on a blue background at the left" not in got
    assert all(c.startswith("a red ") for c in got)                 # the kept word stays


def test_tag_captions_swap_within_a_kind_and_drop_each_tag():
    tags = ["sks, 1girl, red hair, blue eyes, smile", "sks, 1boy, blue hair, green eyes", "sks, 1girl, red hair, green eyes, outdoors",
            "sks, 1girl, blue hair, blue eyes, outdoors, smile"]
    e = dataset_edits(tags, keep=["sks"])
    assert e.style == "tags"
    got = sorted((c, t) for c, t in e("sks, 1girl, red hair, blue eyes, smile"))
    assert got == sorted([("sks, 1girl, blue hair, blue eyes, smile", "hair"), ("sks, 1girl, red hair, green eyes, smile", "eyes"),
                          ("sks, red hair, blue eyes, smile", "drop"), ("sks, 1girl, blue eyes, smile", "drop"),
                          ("sks, 1girl, red hair, smile", "drop"), ("sks, 1girl, red hair, blue eyes", "drop")])


words = st.sampled_from(["a", "the", "red", "blue", "green", "disc", "square", "on", "left", "right", "big", "small", "dog", "sks"])
captions = st.lists(st.lists(words, min_size=1, max_size=8).map(" ".join), min_size=2, max_size=25)


@settings(max_examples=60, deadline=None)
@given(captions, st.sampled_from(["sentences", "tags"]))
def test_no_edit_is_the_caption_and_each_changes_one_place(caps, style):
    caps = [c.replace(" on ", ", ") for c in caps] if style == "tags" else caps
    e = dataset_edits(caps, keep=["sks"], style=style, synonyms=[["left", "right"]])
    for cap in caps:
        for new, tag, old, put in e.changes(cap):
            assert new != cap
            assert {old.lower(), put.lower()} != {"left", "right"}                     # synonyms never swapped for each other
            assert "sks" not in old.lower().split()                                     # the kept word is never edited
            a = 0                                                                       # the rest of the caption is kept as written
            while a < min(len(cap), len(new)) and cap[a] == new[a]: a += 1
            b = 0
            while b < min(len(cap), len(new)) - a and cap[-1 - b] == new[-1 - b]: b += 1
            region = cap[a:len(cap) - b].lower()
            if tag == "drop": assert old.lower() in cap.lower() and len(new) < len(cap)
            else: assert region in old.lower(), (cap, new, old)                        # only the replaced words changed


def test_a_trigger_of_several_words_is_never_edited():
    caps = [f"a photo of ohwx man {w}" for w in ("in a red hat", "in a blue hat")] + [f"a photo of a {g} in a {c} hat" for g in ("woman", "man") for c in ("red", "blue")]
    e = dataset_edits(caps * 2, keep=["ohwx man"])
    assert all("ohwx man" in c for c, _ in e("a photo of ohwx man in a red hat"))
    tags = dataset_edits(["ohwx man, red hat, smile", "ohwx man, blue hat, frown", "woman, red hat, smile"] * 2, keep=["ohwx man"], style="tags")
    assert all(c.startswith("ohwx man, ") for c, _ in tags("ohwx man, red hat, smile"))


def test_punctuated_synonyms_and_the_first_tag_dropped_cleanly():
    e = dataset_edits(["mr. smith, red hat", "mr. jones, blue hat", "ms. brown, red hat"] * 2, style="tags", synonyms=[["Mr. Smith", "Mr. Jones"]])
    assert ("red hat", "drop") in [(c, t) for c, t in e("mr. smith, red hat")]           # no leading space left
