"""MetaMorph's LLaMA-3 chat prompt and its tokenisation, restated.

Behaviour restated from facebookresearch/metamorph (read, not copied):
  metamorph/conversation.py  conv_llama_3 + Conversation.get_prompt (LLAMA_3 style)
  metamorph/mm_utils.py      tokenizer_image_token
  inference/demo.py          how an image is put in front of the user's text

conv_llama_3:
  system = "<|begin_of_text|>"
  roles  = ("<|start_header_id|>user<|end_header_id|>\\n",
            "<|start_header_id|>assistant<|end_header_id|>\\n")
  sep    = "<|eot_id|>"
  get_prompt (LLAMA_3): system, then per message: role + text + sep when the
  text is truthy, role alone when it is None/empty (the generation prompt).

tokenizer_image_token: split the prompt on "<image>", run the HF tokenizer on
every chunk with its defaults (add_special_tokens=True, so the post-processor
puts <|begin_of_text|> in front of every chunk), and if the first chunk starts
with the BOS id keep one BOS and drop the first id of every chunk; between
chunks put IMAGE_TOKEN_INDEX (-200).  Because the prompt text itself starts
with "<|begin_of_text|>" (the system string), the first chunk is
[BOS(post-processor), BOS(from the text), ...]; only the post-processor's BOS
is dropped, so the ids start with BOS BOS.
"""

IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"
IM_START = "<image_start>"
IM_END = "<image_end>"

SYSTEM = "<|begin_of_text|>"
ROLES = {"user": "<|start_header_id|>user<|end_header_id|>\n",
         "assistant": "<|start_header_id|>assistant<|end_header_id|>\n"}
SEP = "<|eot_id|>"


def get_prompt_llama3(messages, add_generation_prompt=True):
    """messages: [{"role": "user"|"assistant", "content": str}], alternating,
    starting with user (MetaMorph asserts this order)."""
    out = SYSTEM
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        assert m["role"] == expected, "conv_llama_3 needs user/assistant alternation"
        text = m["content"]
        if text:
            out += ROLES[m["role"]] + text + SEP
        else:
            out += ROLES[m["role"]]
    if add_generation_prompt:
        # conv.append_message(conv.roles[1], None)
        out += ROLES["assistant"]
    return out


def render_image_parts(messages):
    """inference/demo.py with mm_use_im_start_end=True and no placeholder in
    the text: qs = ("<image_start><image><image_end>" * n_images) + "\\n" + qs.
    Content may be a list of parts {"type": "image"} / {"type": "text", "text": ...}."""
    out = []
    for m in messages:
        c = m["content"]
        if isinstance(c, list):
            n_img = sum(1 for p in c if p["type"] == "image")
            text = "".join(p["text"] for p in c if p["type"] == "text")
            if n_img:
                text = (IM_START + DEFAULT_IMAGE_TOKEN + IM_END) * n_img + "\n" + text
            c = text
        out.append({"role": m["role"], "content": c})
    return out


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX):
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)]
    ids = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    # chunk0, sep, chunk1, sep, ..., chunkN with sep = [image_token_index] * (offset + 1);
    # every element loses its first `offset` ids.
    seq = []
    for i, c in enumerate(chunks):
        if i > 0:
            seq.append([image_token_index] * (offset + 1))
        seq.append(c)
    for x in seq:
        ids.extend(x[offset:])
    return ids


CHAT_CASES = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Draw a cat sitting on a red chair."}],
    [{"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Tell me a joke."}],
    [{"role": "user", "content": "Line one\nLine two\n\nLine four"}],
    [{"role": "user", "content": "  leading spaces and trailing  \n"}],
    [{"role": "user", "content": "人工智能正在改变世界。你好！"},
     {"role": "assistant", "content": "是的。Привет, мир! 😀👍🏽"},
     {"role": "user", "content": "Ça va? Très bien. It's DON'T 12345"}],
    [{"role": "user", "content": "def f(x):\n    return x * 2\n\nprint(f(21))"}],
    [{"role": "user", "content": "Write <|eot_id|> literally"}],
    [{"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"},
     {"role": "assistant", "content": "d"},
     {"role": "user", "content": "e"}],
    [{"role": "user", "content": "Windows\r\nline endings\r\n"}],
    [{"role": "user", "content": "Generate an image of a sunset over the ocean."},
     {"role": "assistant", "content": "<image_start><image_end>"},
     {"role": "user", "content": "Now make it blue."}],
]

CHAT_IMAGE_CASES = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this animal?"}]}],
    [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                  {"type": "text", "text": "Compare the two pictures."}]}],
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
     {"role": "assistant", "content": "A cat on a chair."},
     {"role": "user", "content": "What colour is the chair?"}],
]
