/* See messages.h. */
#include "messages.h"

#include <stdlib.h>

void mm_request_free(mm_request *r) {
    if (!r) return;
    free(r->prompt);
    free(r->visual);
    free(r->image_key);
    for (int i = 0; r->image_data && i < r->n_images; i++) free(r->image_data[i]);
    free(r->image_data), free(r->image_len), free(r->image_where);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r);
}

void mm_reply_free(mm_reply *r) {
    if (!r) return;
    free(r->text);
    free(r->ids);
    free(r->visual);
    free(r->png);
    free(r->bytes);
    free(r);
}
