"""A straightforward re-implementation of the official VQA evaluation, kept in the tests as an independent oracle.

Written for this project's tests from the logic of ``vqaEval.py`` of the VQA API (GT-Vision-Lab/VQA,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, commit 458a8b2 of October 2016, a Python 2 script): it follows
the official procedure step by step, on the official data layout, and shares no code with
``efficientvlm.metrics.vqa``:

* questions are dicts ``{"answers": [{"answer", "answer_id"}, ...], "question_type", "answer_type"}`` and the
  predictions dicts ``{"answer"}``, keyed by question id;
* the prediction is cleaned (newline, tab, strip), then goes through the punctuation step and the word step;
* the annotators' answers are replaced *in place* by their punctuation-step output when they are not all equal,
  and left as they are otherwise;
* each annotator's answer dict is held out in turn and the prediction is counted among the *other* dicts
  (compared as dicts, as the official loop does; the answer ids keep them distinct);
* the punctuation step is written with explicit loops instead of regular expressions; digits are ASCII only,
  as Python 2's ``re`` without the UNICODE flag, and at most 32 periods are deleted (the official script passes
  ``re.UNICODE`` as ``re.sub``'s count);
* accuracies are averaged per question, overall, per question type and per answer type (unrounded fractions;
  the official script prints ``round(100 * x, 2)``).
"""

from __future__ import annotations

import copy

PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ["a", "an", "the"]
# The official contraction table as "key value" pairs (keys with capitals never match after lower-casing).
_CONTRACTION_PAIRS = """
    aint ain't arent aren't cant can't couldve could've couldnt couldn't couldn'tve couldn't've
    couldnt've couldn't've didnt didn't doesnt doesn't dont don't hadnt hadn't hadnt've hadn't've
    hadn'tve hadn't've hasnt hasn't havent haven't hed he'd hed've he'd've he'dve he'd've hes he's howd how'd
    howll how'll hows how's Id've I'd've I'dve I'd've Im I'm Ive I've isnt isn't itd it'd itd've it'd've
    it'dve it'd've itll it'll let's let's maam ma'am mightnt mightn't mightnt've mightn't've
    mightn'tve mightn't've mightve might've mustnt mustn't mustve must've neednt needn't notve not've
    oclock o'clock oughtnt oughtn't ow's'at 'ow's'at 'ows'at 'ow's'at 'ow'sat 'ow's'at shant shan't
    shed've she'd've she'dve she'd've she's she's shouldve should've shouldnt shouldn't shouldnt've shouldn't've
    shouldn'tve shouldn't've somebody'd somebodyd somebodyd've somebody'd've somebody'dve somebody'd've
    somebodyll somebody'll somebodys somebody's someoned someone'd someoned've someone'd've
    someone'dve someone'd've someonell someone'll someones someone's somethingd something'd
    somethingd've something'd've something'dve something'd've somethingll something'll thats that's
    thered there'd thered've there'd've there'dve there'd've therere there're theres there's theyd they'd
    theyd've they'd've they'dve they'd've theyll they'll theyre they're theyve they've twas 'twas wasnt wasn't
    wed've we'd've we'dve we'd've weve we've werent weren't whatll what'll whatre what're whats what's
    whatve what've whens when's whered where'd wheres where's whereve where've whod who'd whod've who'd've
    who'dve who'd've wholl who'll whos who's whove who've whyll why'll whyre why're whys why's wont won't
    wouldve would've wouldnt wouldn't wouldnt've wouldn't've wouldn'tve wouldn't've yall y'all yall'll y'all'll
    y'allll y'all'll yall'd've y'all'd've y'alld've y'all'd've y'all'dve y'all'd've youd you'd youd've you'd've
    you'dve you'd've youll you'll youre you're youve you've
""".split()
CONTRACTIONS = dict(zip(_CONTRACTION_PAIRS[0::2], _CONTRACTION_PAIRS[1::2]))
ASCII_DIGITS = "0123456789"
PERIOD_LIMIT = 32


def has_digit_comma_digit(text: str) -> bool:
    return any(text[i] in ASCII_DIGITS and text[i + 1] == "," and text[i + 2] in ASCII_DIGITS
               for i in range(len(text) - 2))


def punctuation_step(text: str) -> str:
    out = text
    comma_rule = has_digit_comma_digit(text)
    for mark in PUNCTUATION:
        touches_space = (mark + " ") in text or (" " + mark) in text  # tested on the original text
        out = out.replace(mark, "" if touches_space or comma_rule else " ")
    kept, deleted = [], 0
    for i, char in enumerate(out):
        followed_by_digit = i + 1 < len(out) and out[i + 1] in ASCII_DIGITS
        if char == "." and not followed_by_digit and deleted < PERIOD_LIMIT:
            deleted += 1
            continue
        kept.append(char)
    return "".join(kept)


def word_step(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def evaluate(ground_truth: dict, results: dict) -> dict:
    """``{"per_question": {qid: acc}, "overall": acc, "per_question_type": {...}, "per_answer_type": {...}}``."""
    ground_truth = copy.deepcopy(ground_truth)  # the official loop rewrites the answers in place
    per_question, by_qtype, by_atype = {}, {}, {}
    for qid, question in ground_truth.items():
        prediction = results[qid]["answer"].replace("\n", " ").replace("\t", " ").strip()
        prediction = word_step(punctuation_step(prediction))
        answers = question["answers"]
        if len({a["answer"] for a in answers}) > 1:
            for a in answers:
                a["answer"] = punctuation_step(a["answer"])
        annotator_scores = []
        for held_out in answers:
            others = [a for a in answers if a != held_out]
            matching = [a for a in others if a["answer"] == prediction]
            annotator_scores.append(min(1.0, len(matching) / 3))
        accuracy = sum(annotator_scores) / len(annotator_scores)
        per_question[qid] = accuracy
        by_qtype.setdefault(question["question_type"], []).append(accuracy)
        by_atype.setdefault(question["answer_type"], []).append(accuracy)
    return {
        "per_question": per_question,
        "overall": sum(per_question.values()) / len(per_question),
        "per_question_type": {t: sum(v) / len(v) for t, v in by_qtype.items()},
        "per_answer_type": {t: sum(v) / len(v) for t, v in by_atype.items()},
    }


def as_official_files(predictions, references, question_types=None, answer_types=None) -> tuple[dict, dict]:
    """Lay lists of predictions and annotator answers out as the official annotation and result records."""
    ground_truth, results = {}, {}
    for qid, (prediction, answers) in enumerate(zip(predictions, references)):
        ground_truth[qid] = {
            "answers": [{"answer": a, "answer_id": k + 1, "answer_confidence": "yes"} for k, a in enumerate(answers)],
            "question_type": question_types[qid] if question_types else "",
            "answer_type": answer_types[qid] if answer_types else "",
        }
        results[qid] = {"question_id": qid, "answer": prediction}
    return ground_truth, results
