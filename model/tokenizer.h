/* Byte-level BPE tokenizer reading HF tokenizer.json of the LLaMA-3 kind, and the
 * LLaMA-3 chat template MetaMorph was trained with. Encoding: added/special tokens are
 * matched first (when allowed), the pre-tokenizer Split regex runs through PCRE2
 * (UTF + UCP + JIT), each piece is mapped byte->unicode (GPT-2 ByteLevel) and merged
 * by BPE rank (ignore_merges: a piece that is itself a vocab entry is one token).
 * Decoding gives bytes; the streaming decoder never emits half a UTF-8 character. */
#ifndef MM_TOKENIZER_H
#define MM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct mm_tokenizer mm_tokenizer;

/* path: a tokenizer.json file. */
mm_status mm_tokenizer_load(const char *path, mm_tokenizer **out);
void mm_tokenizer_free(mm_tokenizer *tok);

/* Total ids (vocab + added tokens, max id + 1). */
int32_t mm_tokenizer_n_vocab(const mm_tokenizer *tok);
/* The Unicode version of the character classes (\p{L}, \p{N}, \s) the pre-tokenizer
 * splits with: PCRE2's tables ("14.0.0" with Debian 12's PCRE2 10.42). Code points added
 * in later versions are unassigned here, so text holding them can split differently from
 * HF tokenizers (see README, "Tokenizer"). */
const char *mm_tokenizer_unicode_version(void);
/* Id of an exact token string (vocab or added), or -1. */
int32_t mm_tokenizer_token_id(const mm_tokenizer *tok, const char *token);
/* Special-token ids from tokenizer.json's post-processor / added tokens; -1 if none. */
int32_t mm_tokenizer_bos_id(const mm_tokenizer *tok);

/* Encodes UTF-8 text (len bytes) to ids, without BOS. Invalid UTF-8 -> MM_ERR_INVALID.
 * allow_special: match added tokens marked special inside text (HF default behaviour);
 * when 0 only non-special added tokens are matched and e.g. "<|eot_id|>" is plain text.
 * *ids is malloc'd (caller frees); *n_ids its length. */
mm_status mm_tokenizer_encode(const mm_tokenizer *tok, const char *text, size_t len,
                              int allow_special, int32_t **ids, size_t *n_ids);

/* Bytes of one token (ByteLevel-decoded; added tokens as their content).
 * Returns NULL for an id out of range. *len gets the byte count. */
const char *mm_tokenizer_token_bytes(const mm_tokenizer *tok, int32_t id, size_t *len);
/* Is this id a special added token (skipped by skip_special_tokens decoding)? */
int mm_tokenizer_is_special(const mm_tokenizer *tok, int32_t id);

/* Decodes ids to a malloc'd NUL-terminated UTF-8 string, as transformers' decode does:
 * byte sequences that are not valid UTF-8 become U+FFFD (Python's errors="replace").
 * skip_special: drop special tokens like HF skip_special_tokens=True. */
mm_status mm_tokenizer_decode(const mm_tokenizer *tok, const int32_t *ids, size_t n,
                              int skip_special, char **out, size_t *out_len);

/* Streaming detokenizer: feed ids one by one, get only complete UTF-8 characters. */
typedef struct {
    unsigned char pending[8];
    int n_pending;
    int skip_special;
} mm_detok;

void mm_detok_init(mm_detok *d, int skip_special);
/* Appends the bytes now complete to out (cap bytes; a token plus pending bytes never
 * exceeds the longest token + 8; invalid sequences become U+FFFD, so up to 3x that).
 * Returns the number written, or -1 (state unchanged) if cap is too small. */
int mm_detok_push(mm_detok *d, const mm_tokenizer *tok, int32_t id, char *out, size_t cap);
/* Flushes what is left at the end of a stream (invalid tails become U+FFFD). */
int mm_detok_flush(mm_detok *d, char *out, size_t cap);

/* ---- Chat template (MetaMorph's conv_llama_3 + tokenizer_image_token) ----
 * BOS (post-processor) + "<|begin_of_text|>" (so the ids start with BOS BOS, as in the
 * reference), then per message "<|start_header_id|>ROLE<|end_header_id|>\n" + content +
 * "<|eot_id|>" (empty content: the header alone), then
 * "<|start_header_id|>assistant<|end_header_id|>\n" when add_generation_prompt. As in the
 * reference, special-token strings inside content are recognised (allow_special=1):
 * callers that must keep users from injecting control tokens reject them first. */
typedef struct {
    const char *role;    /* "user", "assistant" or "system" */
    const char *content; /* UTF-8 text */
} mm_chat_message;

mm_status mm_chat_encode(const mm_tokenizer *tok, const mm_chat_message *msgs, size_t n_msgs,
                         int add_generation_prompt, int32_t **ids, size_t *n_ids);
/* The same, with every occurrence of the string marker in a content replaced by the id
 * marker_id and the text around it encoded piece by piece: MetaMorph's
 * tokenizer_image_token, which splits the prompt on "<image>" and tokenizes each chunk
 * alone, putting IMAGE_TOKEN_INDEX between them. *n_marked counts the markers. */
mm_status mm_chat_encode_marked(const mm_tokenizer *tok, const mm_chat_message *msgs, size_t n_msgs,
                                int add_generation_prompt, const char *marker, int32_t marker_id, int32_t **ids,
                                size_t *n_ids, int *n_marked);

#endif
