#!/usr/bin/env python3
"""Stage 0: the world's byte-level BPE tokenizer, LLaMA-3 structure (pre-tokenizer,
post-processor, decoder) and MetaMorph's special tokens in the same id layout as
tools/reference/make_tokenizer.py: BPE ids, then the 16 LLaMA-3.1 specials, then
<image_start>, <image_end>. Writes assets/world/llm/tokenizer*.json."""
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import common  # noqa: E402
from make_tokenizer import IMAGE_TOKENS, LLAMA3_PATTERN, SPECIALS  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

BPE_VOCAB = 640   # upper bound; the trainer stops when every word of the world is one token


def main():
    tok = Tokenizer(models.BPE(byte_fallback=False, ignore_merges=True, fuse_unk=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(common.corpus_sentences(), trainer=trainer)
    n_bpe = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False, lstrip=False, rstrip=False,
                                       single_word=False) for s in SPECIALS])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|>:0 $A:0",
                                      pair="<|begin_of_text|>:0 $A:0 <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                 model_max_length=2048, clean_up_tokenization_spaces=False)
    assert hf.add_tokens(IMAGE_TOKENS, special_tokens=True) == 2
    out = os.path.join(common.ASSET, "llm")
    os.makedirs(out, exist_ok=True)
    hf.save_pretrained(out)
    ex = common.chat(common.user_image_text(common.CAPTION_Q), "a small red circle on the left")
    ids = common.mt.tokenizer_image_token(ex, hf)
    print("bpe", n_bpe, "len(tokenizer)", len(hf), "bos", bos, "image ids",
          hf.convert_tokens_to_ids(IMAGE_TOKENS), "example", len(ids), ids)


if __name__ == "__main__":
    main()
