"""The labeling tool in a real headless Chromium (Debian's chromium + chromium-driver, through
Selenium): a labeler opens their link, reads the instructions, ranks a task by keyboard with a
tie and an F flag, ranks another by drag-and-drop, submits, sees progress; the admin page shows
the counts and the agreement table; the export validates and holds the expected rankings.

Screenshots of the task and admin pages go to the test's tmp folder, and to
``$LABEL_SCREENSHOT_DIR`` when set (``LABEL_SCREENSHOT_DIR=docs`` refreshes the README's).
"""

import os
import shutil
import tempfile

import pytest

from rlhf_jax import feedback as fb
from rlhf_jax.feedback import cli as feedback_cli
from rlhf_jax.label import LabelStore, export_ranked
from rlhf_jax.label.loadtest import serve
from tests.label_fixtures import DOG, HOT, answer_in_display_order, labeler_id

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage "
         "--disable-background-networking --disable-component-update --disable-sync "
         "--no-first-run --window-size=1000,950").split()


@pytest.fixture
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} missing: .ci/run installs Debian's "
                        "chromium and chromium-driver")
        pytest.skip("Debian chromium / chromium-driver not installed (apt-get install -y "
                    "chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="label-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _screenshot(driver, tmp_path, name):
    path = tmp_path / name
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    if os.environ.get("LABEL_SCREENSHOT_DIR"):
        shutil.copy(path, os.path.join(os.environ["LABEL_SCREENSHOT_DIR"], name))


_DRAG_TO_TOP = """
const [src, list] = arguments, top = list.querySelector('li.completion');
const dt = new DataTransfer(), r = top.getBoundingClientRect();
src.dispatchEvent(new DragEvent('dragstart', {bubbles: true, dataTransfer: dt}));
top.dispatchEvent(new DragEvent('dragover', {bubbles: true, cancelable: true, dataTransfer: dt,
                                             clientY: r.top + 1}));
top.dispatchEvent(new DragEvent('drop', {bubbles: true, cancelable: true, dataTransfer: dt}));
src.dispatchEvent(new DragEvent('dragend', {bubbles: true, dataTransfer: dt}));
"""


def test_label_in_chromium(browser, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    db = str(tmp_path / "labels.db")
    store, admin = LabelStore.create(db, [HOT, DOG], criterion="helpfulness",
                                     instructions=fb.labeler_instructions("helpfulness"),
                                     instructions_id=fb.LABELER_INSTRUCTIONS_ID,
                                     labelers_per_prompt=3)
    tokens = {name: store.add_labeler(name) for name in ("ann", "bob", "cid")}
    d = browser
    with serve(db) as server:
        # 1. the link -> the instructions
        d.get(f"{server.url}/login/{tokens['ann']}")
        assert d.current_url.endswith("/instructions")
        assert "rank the completions by helpfulness" in d.find_element(By.ID, "instructions").text
        d.find_element(By.ID, "start").click()

        # 2. the HOT task, ranked by keyboard: 1, a tie at 2, and F; the <script> is text
        assert d.find_element(By.ID, "prompt").text == HOT.prompt
        items = d.find_elements(By.CSS_SELECTOR, "li.completion")
        texts = [li.find_element(By.CLASS_NAME, "text").text for li in items]
        assert sorted(texts) == sorted(HOT.completions)  # the <script> shows as its text
        with pytest.raises(NoAlertPresentException):
            d.switch_to.alert.text
        keys = {HOT.completions[0]: "2", HOT.completions[1]: "1", HOT.completions[2]: "2",
                HOT.completions[3]: "f"}
        items[0].find_element(By.CLASS_NAME, "text").click()  # focus the first completion
        chain = ActionChains(d)
        for text in texts:  # rank the focused one, then arrow down to the next
            chain.send_keys(keys[text]).send_keys(Keys.ARROW_DOWN)
        chain.perform()
        shown = [li.find_element(By.TAG_NAME, "select").get_attribute("value") for li in items]
        assert shown == [keys[t].upper() for t in texts]
        assert ["flagged" in li.get_attribute("class") for li in items] == [k == "f" for k in
                                                                            map(keys.get, texts)]
        _screenshot(d, tmp_path, "label_task.png")
        d.find_element(By.ID, "submit").click()

        # 3. saved, progress shown, next task (DOG) ranked by drag-and-drop
        assert "Saved task" in d.find_element(By.ID, "saved").text
        assert d.find_element(By.ID, "progress").text.startswith("1 answered")
        assert d.find_element(By.ID, "prompt").text == DOG.prompt
        lst = d.find_element(By.ID, "completions")
        for text in (" green", " a pet", " a furry animal"):  # each to the top: best ends first
            li = next(x for x in d.find_elements(By.CSS_SELECTOR, "li.completion")
                      if x.find_element(By.CLASS_NAME, "text").text.strip() == text.strip())
            d.execute_script(_DRAG_TO_TOP, li, lst)
        def shown_order():
            return [(x.find_element(By.CLASS_NAME, "text").text.strip(),
                     x.find_element(By.TAG_NAME, "select").get_attribute("value"))
                    for x in d.find_elements(By.CSS_SELECTOR, "li.completion")]

        assert shown_order() == [("a furry animal", "1"), ("a pet", "2"), ("green", "3")]
        last = d.find_elements(By.CSS_SELECTOR, "li.completion")[-1]  # keyboard reorder: Alt+arrows
        last.find_element(By.CLASS_NAME, "text").click()
        ActionChains(d).key_down(Keys.ALT).send_keys(Keys.ARROW_UP).key_up(Keys.ALT).perform()
        assert shown_order() == [("a furry animal", "1"), ("green", "2"), ("a pet", "3")]
        ActionChains(d).key_down(Keys.ALT).send_keys(Keys.ARROW_DOWN).key_up(Keys.ALT).perform()
        assert shown_order() == [("a furry animal", "1"), ("a pet", "2"), ("green", "3")]
        d.find_element(By.ID, "submit").click()
        assert "no task left for you" in d.find_element(By.ID, "message").text
        d.get(f"{server.url}/progress")
        assert d.find_element(By.ID, "progress").text.startswith("2 answered")

        # 4. two more labelers (bob agrees with ann; cid ranks in reverse), then the admin page
        for name, hot, dog in (("bob", ["2", "1", "3", "4"], ["3", "2", "1"]),
                               ("cid", ["3", "4", "2", "1"], ["1", "2", "3"])):
            lid = labeler_id(tokens[name])
            for ranks, item in ((hot, HOT), (dog, DOG)):
                t = store.next_task(lid)
                store.submit(lid, t, answer_in_display_order(
                    store, lid, t, dict(zip(item.completions, ranks))))
        d.get(f"{server.url}/login/{admin}")
        assert d.current_url.endswith("/admin")
        counts = [r.text.split() for r in d.find_elements(By.CSS_SELECTOR, "#counts tbody tr")]
        assert [r[:4] for r in counts] == [["ann", "2", "0", "0"], ["bob", "2", "0", "0"],
                                           ["cid", "2", "0", "0"]]
        table = [r.text.split() for r in d.find_elements(By.CSS_SELECTOR, "#agreement tbody tr")]
        assert sorted(r[0] for r in table) == ["ann", "bob", "cid"]
        assert table[-1][0] == "cid"  # the contrarian at the bottom
        _screenshot(d, tmp_path, "label_admin.png")

    # 5. the export validates and holds the expected rankings (storage order)
    report = export_ranked(LabelStore(db), tmp_path / "ranked.jsonl")
    assert (report.prompts, report.labels) == (2, 6)
    records, _ = fb.read_ranked(tmp_path / "ranked.jsonl", strict=True)
    ann = {r.prompt_id: next(lb for lb in r.labels if lb.labeler == "ann") for r in records}
    assert (ann["hot"].ranking, ann["hot"].flagged) == ((2, 1, 2, None), (3,))
    assert (ann["dog"].ranking, ann["dog"].flagged) == ((3, 2, 1), ())
    expected_table = fb.build_consensus(records).table
    assert [[r.labeler, str(r.prompts), str(r.pairs), f"{r.agreement:.3f}"] for r in expected_table.rows] \
        == [row[:4] for row in table]  # the admin page showed the feedback module's table
    assert feedback_cli.main(["stats", str(tmp_path / "ranked.jsonl")]) == 0
