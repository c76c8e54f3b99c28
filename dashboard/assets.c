/* dashboard/assets.c — the page's own files (dashboard/page/), embedded into the binary at build time with
 * the assembler's .incbin, so the page needs nothing but the binary and the charting library at run time.
 * dashboard/module.mk makes this object depend on the files. */
#include <stddef.h>

#include "dashboard/dashboard_int.h"

#ifndef RLHF_SOURCE_ROOT
#define RLHF_SOURCE_ROOT "."
#endif

#define DASH_EMBED(sym, file)                                                                        \
    __asm__(".section .rodata\n"                                                                     \
            ".global " #sym "_start\n.hidden " #sym "_start\n.global " #sym "_end\n.hidden " #sym "_end\n" \
            ".balign 16\n" #sym "_start:\n"                                                          \
            ".incbin \"" RLHF_SOURCE_ROOT "/dashboard/page/" file "\"\n" #sym "_end:\n"               \
            ".byte 0\n.previous\n");                                                                 \
    extern const unsigned char sym##_start[], sym##_end[];

DASH_EMBED(dashboard_page_html, "index.html")
DASH_EMBED(dashboard_page_js, "dashboard.js")
DASH_EMBED(dashboard_page_css, "dashboard.css")

size_t dashboard_assets(const dashboard_asset **list) {
    static dashboard_asset assets[3];
    assets[0] = (dashboard_asset){"/", "text/html; charset=utf-8", dashboard_page_html_start,
                                  (size_t)(dashboard_page_html_end - dashboard_page_html_start)};
    assets[1] = (dashboard_asset){"/dashboard.js", "text/javascript; charset=utf-8", dashboard_page_js_start,
                                  (size_t)(dashboard_page_js_end - dashboard_page_js_start)};
    assets[2] = (dashboard_asset){"/dashboard.css", "text/css; charset=utf-8", dashboard_page_css_start,
                                  (size_t)(dashboard_page_css_end - dashboard_page_css_start)};
    *list = assets;
    return 3;
}
