from pathlib import Path

import pytest

from exhibits.config import ConfigError, UnknownExhibit, load_exhibit, load_exhibits
from exhibits.show import load_show


def test_builtin_exhibits_load_with_every_doorways_pair():
    ex = load_exhibits()
    assert {"demo", "doorways", "strange-attractions"} <= set(ex)
    doors = ex["doorways"]
    groups = {g.name: g for g in doors.groups}
    assert list(groups) == ["Afterlife", "Nature", "Other Worlds", "Future"]
    assert len(groups["Afterlife"].sets) == 7 and len(groups["Nature"].sets) == 13
    assert len(groups["Other Worlds"].sets) == 9 and len(groups["Future"].sets) == 4
    assert doors.prompts_for(("Heaven", "Hell"))[0].text == "Entrance to the Heaven realm by James Gurney"
    assert "enlightenment" in doors.realm_prompt("Bodhi")
    assert ex["strange-attractions"].sigma[0] < ex["strange-attractions"].sigma[1]
    assert ex["demo"].generator == "default"


def write(tmp_path: Path, text: str, name="art.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("body,key,fragment", [
    ('title = "x"\n', "generator", "missing"),
    ('title = "x"\n[generator]\nname = 3\n', "generator.name", "text"),
    ('title = "x"\nbogus = 1\n[generator]\nname = "default"\n', "bogus", "unknown key"),
    ('title = "x"\n[canvas]\nwidth = 5\n[generator]\nname = "default"\n', "canvas.width", "from 16 to 8192"),
    ('title = "x"\n[generator]\nname = "default"\n[sigma]\nmin = 2.0\nmax = 1.0\n', "sigma.max", ">= sigma.min"),
    ('title = "x"\n[generator]\nname = "default"\n[prompts]\ntemplate = "no realm"\n', "prompts.template", "{realm}"),
    ('title = "x"\n[generator]\nname = "default"\n[[prompts.group]]\nname = "A"\nsets = [["a", 3]]\n',
     "prompts.group[0].sets[0]", "realm names"),
    ('title = "x"\n[generator\n', "(syntax)", "valid TOML"),
])
def test_malformed_exhibit_names_file_key_and_expectation(tmp_path, body, key, fragment):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_exhibit(path)
    msg = str(err.value)
    assert str(path) in msg and f"'{key}'" in msg and fragment in msg


def test_unknown_generator_is_named_with_the_choices(tmp_path):
    path = write(tmp_path, 'title = "x"\n[generator]\nname = "dalle"\n')
    with pytest.raises(ConfigError, match=r"generator\.name.*default.*dalle"):
        load_exhibit(path, known_generators={"default", "stylegan"})


def test_unknown_exhibit_lists_known_ones():
    with pytest.raises(UnknownExhibit, match="unknown exhibit 'nope'; known exhibits: .*doorways"):
        load_exhibits(["nope"])


def test_artist_directory_overrides_builtin(tmp_path):
    write(tmp_path, 'title = "My demo"\n[generator]\nname = "default"\n', "demo.toml")
    assert load_exhibits(["demo"], [tmp_path])["demo"].title == "My demo"


def test_show_config_validation(tmp_path):
    cfg = load_show(write(tmp_path, '[show]\nexhibits = ["demo"]\nport = 9000\nfullscreen = false\n', "k.toml"))
    assert cfg.port == 9000 and not cfg.fullscreen and cfg.exhibits == ("demo",)
    with pytest.raises(ConfigError, match="show.port"):
        load_show(write(tmp_path, '[show]\nport = "x"\n', "k2.toml"))
    with pytest.raises(ConfigError, match="show.device.*auto, cpu"):
        load_show(write(tmp_path, '[show]\ndevice = "tpu"\n', "k3.toml"))
