"""Host tests of the assistant nodes in a real ComfyUI: load, chat with an image and a mask, continue, cancel; the
settings a chat used, the official precision and the Chinese phrasings of an llmga-cn checkpoint."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from llmga.mllm.tasks import TEXTEXTEND_PROMPT_BEHIND_ZH, TEXTEXTEND_PROMPT_ZH

pytestmark = pytest.mark.host


def released(fixture) -> str:
    """The loader's name for the tiny checkpoint: it sits in models/LLM under a released name."""
    return f"binxia/{fixture.path.name}"


def load_node(model: str, dtype: str = "fp32", attention: str = "sdpa") -> dict:
    return {"class_type": "LLMGALoadAssistant", "inputs": {
        "model": model, "dtype": dtype, "device": "cpu", "quantization": "none", "attention": attention,
        "template": "auto", "allow_download": False}}


def chat_node(message: str, task: str, *, history=None, image=None, mask=None, max_new_tokens=24, seed=3,
              temperature=0.7, top_p=0.0, **optional) -> dict:
    """A Chat node; top_p 0 (the default) and the optional inputs left out: the checkpoint's sampling settings."""
    inputs = {"assistant": ["1", 0], "message": message, "task": task, "seed": seed, "temperature": temperature,
              "top_p": top_p, "max_new_tokens": max_new_tokens, "keep_loaded": True, **optional}
    for name, link in (("history", history), ("image", image), ("mask", mask)):
        if link is not None:
            inputs[name] = link
    return {"class_type": "LLMGAChat", "inputs": inputs}


def preview(link) -> dict:
    return {"class_type": "PreviewAny", "inputs": {"source": link}}


def test_loader_lists_local_checkpoints_and_released_names(comfy, host_assistant):
    options = comfy.object_info()["LLMGALoadAssistant"]["input"]["required"]["model"][1]["options"]
    assert "binxia/llmga-vicuna-7b-v1.5-full-finetune" in options
    assert options.count(f"binxia/{host_assistant.path.name}") == 1  # released names stay listed once downloaded
    assert host_assistant.path.name not in options


def test_chat_with_image_and_mask_reaches_extract_and_preview(comfy, host_assistant):
    picture = Image.new("RGBA", (96, 64), (30, 140, 200, 255))
    picture.paste((0, 0, 0, 0), (24, 16, 72, 48))
    picture.save(comfy.input_dir / "llmga_chat_inpaint.png")
    graph = {
        "1": load_node(released(host_assistant)),
        "2": {"class_type": "LoadImage", "inputs": {"image": "llmga_chat_inpaint.png"}},
        "3": chat_node("", "inpaint", image=["2", 0], mask=["2", 1]),
        "4": {"class_type": "LLMGAExtractGenerationPrompt",
              "inputs": {"reply": ["3", 4], "which": "first", "no_tag_fallback": "whole reply"}},
        "5": preview(["3", 0]), "6": preview(["3", 1]), "7": preview(["3", 2]), "8": preview(["4", 0]),
        "9": preview(["3", 3]),
    }
    outputs = comfy.run(graph)
    reply, prompt, has_prompt, extracted, history = (outputs[n]["text"][0] for n in ("5", "6", "7", "8", "9"))
    assert has_prompt in ("True", "False")
    assert "<gen_image>" not in reply
    assert extracted == (prompt if has_prompt == "True" else extracted)
    assert "ChatHistory(template='qwen_2'" in history and "<image>\\n" in history


def test_second_queued_run_continues_the_conversation(comfy, host_assistant):
    first = {"1": load_node(released(host_assistant)), "2": chat_node("a lighthouse", "text_to_image", seed=11),
             "3": preview(["2", 3])}
    comfy.run(first)
    second = dict(first)
    second.update({"4": chat_node("Make it stormy.", "chat", history=["2", 3], seed=12), "5": preview(["4", 3])})
    prompt_id = comfy.queue(second)
    entry = comfy.wait(prompt_id)
    cached = next(data["nodes"] for kind, data in entry["status"]["messages"] if kind == "execution_cached")
    assert "2" in cached  # the first turn was not asked again
    history = entry["outputs"]["5"]["text"][0]
    assert "a lighthouse" in history and "Make it stormy." in history


def test_mask_without_image_is_a_clear_error(comfy, host_assistant):
    Image.new("L", (32, 32), 255).save(comfy.input_dir / "llmga_mask_only.png")
    graph = {"1": load_node(released(host_assistant)),
             "2": {"class_type": "LoadImageMask", "inputs": {"image": "llmga_mask_only.png", "channel": "red"}},
             "3": chat_node("", "inpaint", mask=["2", 0]), "4": preview(["3", 0])}
    error = comfy.expect_error(graph)
    assert error["exception_type"] == "RuntimeError"
    assert error["exception_message"].startswith("LLMGA Chat: a mask was given without an image")


def test_cancel_stops_a_long_generation(comfy, host_assistant):
    graph = {"1": load_node(released(host_assistant)),
             "2": chat_node("Write a very long story.", "chat", max_new_tokens=4096, temperature=0.0, seed=99),
             "3": preview(["2", 0])}
    kinds = comfy.cancel(comfy.queue(graph), after=0.5, what="generation")
    assert "execution_interrupted" in kinds


def test_assistant_survives_comfyui_unloading_it(comfy, host_assistant):
    """The assistant is a ComfyUI-managed model: after /free unloads everything, the next chat reloads it."""
    graph = {"1": load_node(released(host_assistant)), "2": chat_node("a boat", "text_to_image", seed=21),
             "3": preview(["2", 0])}
    comfy.run(graph)
    comfy.post_json("/free", {"unload_models": True, "free_memory": True})
    graph["2"]["inputs"].update(seed=22, keep_loaded=False)
    outputs = comfy.run(graph)
    assert "text" in outputs["3"]


def test_keep_loaded_off_unloads_the_assistant_right_after_the_reply(comfy, host_assistant):
    """keep_loaded off hands the assistant back through ComfyUI's model management: the next chat must ask ComfyUI to
    load it again ("Requested to load" in its log), which a kept assistant never needs."""
    def load_requests() -> int:
        return comfy.log().count("Requested to load LLMGAModel")

    graph = {"1": load_node(released(host_assistant)),
             "2": chat_node("a kite", "text_to_image", seed=31, max_new_tokens=4), "3": preview(["2", 0])}
    comfy.run(graph)
    loaded = load_requests()
    graph["2"]["inputs"].update(seed=32)
    comfy.run(graph)
    assert load_requests() == loaded  # kept loaded: still among ComfyUI's loaded models
    graph["2"]["inputs"].update(seed=33, keep_loaded=False)
    comfy.run(graph)
    assert load_requests() == loaded  # it was still loaded when this chat began
    graph["2"]["inputs"].update(seed=34, keep_loaded=True)
    comfy.run(graph)
    assert load_requests() == loaded + 1  # the previous chat unloaded it


def test_chat_streams_its_reply_into_the_node(comfy, host_assistant):
    graph = {"1": load_node(released(host_assistant)),
             "2": chat_node("a harbour at dawn", "chat", max_new_tokens=40, temperature=0.9, seed=5),
             "3": preview(["2", 4])}
    outputs, texts = comfy.progress_texts(graph)
    streamed = [text for node, text in texts if node == "2"]
    assert len(streamed) >= 2  # several updates while generating, not one at the end
    assert all(later.startswith(earlier) for earlier, later in zip(streamed, streamed[1:], strict=False))
    assert streamed[-1].strip() == outputs["3"]["text"][0]


def test_chat_reports_the_settings_it_used(comfy, host_assistant):
    """Left at 0, top_p, top_k and repetition_penalty are the checkpoint's (Qwen2's generation_config.json)."""
    graph = {"1": load_node(released(host_assistant)),
             "2": chat_node("a red fox", "text_to_image", max_new_tokens=4, seed=41), "3": preview(["2", 0])}
    assert comfy.run(graph)["2"]["text"][0] == (
        "temperature 0.7, top_p 0.8 (checkpoint), top_k 20 (checkpoint), repetition_penalty 1.1 (checkpoint), "
        "seed 41, max_new_tokens 4; phrasing en; attention sdpa")
    graph["2"] = chat_node("a red fox", "text_to_image", max_new_tokens=4, seed=41, top_p=0.5, top_k=3,
                           repetition_penalty=1.0)
    assert comfy.run(graph)["2"]["text"][0] == ("temperature 0.7, top_p 0.5, top_k 3, repetition_penalty 1, seed 41, "
                                                "max_new_tokens 4; phrasing en; attention sdpa")


@pytest.mark.parametrize(("attention", "used"), [("auto", "sdpa"), ("eager", "eager")])
def test_the_loader_shows_how_the_assistant_computes(comfy, host_assistant, attention, used):
    """auto is flash-attention 2 only on CUDA with flash-attn installed: on this CPU host it is SDPA."""
    graph = {"1": load_node(released(host_assistant), attention=attention),
             "2": chat_node("a red fox", "text_to_image", max_new_tokens=2), "3": preview(["2", 0])}
    outputs = comfy.run(graph)
    assert outputs["1"]["text"][0] == f"qwen2, LLM float32, vision tower float32, attention {used}, on cpu"
    assert outputs["2"]["text"][0].endswith(f"; attention {used}")


def test_official_precision_chats_on_the_cpu(comfy, host_assistant):
    """dtype official: the LLM in fp16 and the tower's own fp32 weights from models/clip_vision."""
    graph = {"1": load_node(released(host_assistant), dtype="official"),
             "2": chat_node("a red fox", "text_to_image", max_new_tokens=4, temperature=0.0), "3": preview(["2", 4])}
    outputs = comfy.run(graph)
    assert outputs["2"]["text"][0].startswith("greedy (temperature 0), repetition_penalty 1.1 (checkpoint)")
    assert "text" in outputs["3"]


def test_an_llmga_cn_checkpoint_asked_in_chinese_gets_chinese_phrasings(comfy, host_assistant):
    name = "llmga-cn-Qwen2-0.5B-full-finetune"
    shutil.copytree(host_assistant.path, host_assistant.path.parent / name, dirs_exist_ok=True)
    graph = {"1": load_node(f"binxia/{name}"),
             "2": chat_node("一只猫坐在窗台上", "text_to_image", max_new_tokens=4, placement="before"),
             "3": preview(["2", 3])}
    outputs = comfy.run(graph)
    assert outputs["2"]["text"][0].endswith("; phrasing zh; attention sdpa")
    history = outputs["3"]["text"][0]
    assert any(f"{phrase} 一只猫坐在窗台上" in history for phrase in TEXTEXTEND_PROMPT_ZH)
    graph["2"] = chat_node("一只猫坐在窗台上", "text_to_image", max_new_tokens=4, language="en")
    outputs = comfy.run(graph)
    assert outputs["2"]["text"][0].endswith("; phrasing en; attention sdpa")
    assert not any(phrase in outputs["3"]["text"][0] for phrase in (*TEXTEXTEND_PROMPT_ZH,
                                                                    *TEXTEXTEND_PROMPT_BEHIND_ZH))
