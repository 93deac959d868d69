"""assets/: the sample CSV trains as an upload would, the Learn page's figures exist."""
import xml.dom.minidom

from dynsdpb.config import RunConfig
from dynsdpb.encoder.data import load_data
from dynsdpb.paths import ASSETS


def test_sample_csv_loads_as_a_three_class_dataset():
    p = ASSETS / "sample" / "reviews.csv"
    cfg = RunConfig(model="tiny-random-bert", dataset="reviews.csv", val_size=30, test_size=30)
    d = load_data(cfg, upload=p.read_bytes())          # as the Setup page's upload passes it
    assert d.task == "classification"
    assert sorted(d.label_names) == ["negative", "neutral", "positive"]
    n = len(d.train.texts) + len(d.val.texts) + len(d.test.texts)
    assert 180 <= n <= 210 and len(d.test.texts) == 30


def test_learn_figures_are_svg():
    names = sorted(f.name for f in (ASSETS / "figures").glob("*.svg"))
    assert names == ["dlb-batch-layout.svg", "dynsdpb-step.svg", "token-kd-alignment.svg"]
    for n in names:
        doc = xml.dom.minidom.parse(str(ASSETS / "figures" / n))
        assert doc.documentElement.tagName == "svg"
