/* See messages.h. */
#include "messages.h"

#include <stdlib.h>

void mm_request_free(mm_request *r) {
    if (!r) return;
    free(r->prompt);
    free(r->visual);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r);
}

void mm_reply_free(mm_reply *r) {
    if (!r) return;
    free(r->text);
    free(r->ids);
    free(r->visual);
    free(r->bytes);
    free(r);
}
