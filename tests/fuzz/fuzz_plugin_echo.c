/* tests/fuzz/fuzz_plugin_echo.c — the process plugin fuzz_process talks to: for every line from the host
 * it answers DIR/init.txt (to an init line) or DIR/reply.txt (to a batch), with each @ID@ replaced by the
 * batch's "id". A plain program rather than a script because bad replies restart the plugin after
 * almost every input, and a shell's start-up would then be most of the fuzzing time.
 *
 *   fuzz_plugin_echo DIR */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    char *line = NULL, *reply = NULL;
    size_t lcap = 0, rcap = 0;
    while (getline(&line, &lcap, stdin) > 0) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", argv[1], strncmp(line, "{\"init\"", 7) ? "reply.txt" : "init.txt");
        FILE *f = fopen(path, "r");
        ssize_t n = f ? getline(&reply, &rcap, f) : -1;
        if (f) fclose(f);
        if (n <= 0) return 1;
        char id[32] = "0";
        const char *p = strstr(line, "\"id\":");
        if (p) snprintf(id, sizeof id, "%lld", strtoll(p + 5, NULL, 10));
        /* written by length: a NUL inside the reply is part of what the host must cope with */
        const char *s = reply, *end = reply + n, *at;
        while ((at = memmem(s, (size_t)(end - s), "@ID@", 4))) {
            fwrite(s, 1, (size_t)(at - s), stdout);
            fputs(id, stdout);
            s = at + 4;
        }
        fwrite(s, 1, (size_t)(end - s), stdout);
        fflush(stdout);
    }
    free(line);
    free(reply);
    return 0;
}
