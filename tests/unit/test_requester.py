"""Who is asking: buyer browsers vs crawlers, previewers and sub-resource loads (edge.requester)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import requester
from edge.requester import DEFAULT_BOT_PATTERNS, RequesterFilter, fetch_reason

# Real User-Agent strings of people who may buy: they must get the cookie.
BUYERS: dict[str, str] = {
    "chrome-windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, "
                      "like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "chrome-mac": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, "
                  "like Gecko) Chrome/121.0.0.0 Safari/537.36",
    "chrome-android": "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like "
                      "Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
    "safari-ios": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 "
                  "(KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    "safari-ipad": "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
                   "like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "firefox-windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 "
                       "Firefox/121.0",
    "firefox-android": "Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0",
    "edge-windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
                    "Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
    "samsung-internet": "Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-S911B) AppleWebKit/537.36 "
                        "(KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile "
                        "Safari/537.36",
    "huawei-browser": "Mozilla/5.0 (Linux; Android 12; HarmonyOS; NOH-AN00; HMSCore 6.12.0.302) "
                      "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/99.0.4844.88 "
                      "HuaweiBrowser/14.0.3.300 Mobile Safari/537.36",
    "uc-browser": "Mozilla/5.0 (Linux; U; Android 12; zh-CN; V2171A Build/SP1A.210812.003) "
                  "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/100.0.4896.58 "
                  "UCBrowser/15.5.8.1228 Mobile Safari/537.36",
    "wechat-ios": "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
                  "(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.42(0x18002a2c) "
                  "NetType/WIFI Language/zh_CN",
    "wechat-android": "Mozilla/5.0 (Linux; Android 13; 22081212C Build/TKQ1.220829.002; wv) "
                      "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/111.0.5563.116 "
                      "Mobile Safari/537.36 XWEB/5235 MMWEBSDK/20230805 MMWEBID/2579 "
                      "MicroMessenger/8.0.42.2460(0x28002A58) WeChat/arm64 Weixin NetType/WIFI "
                      "Language/zh_CN ABI/arm64",
    "douyin-ios": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 "
                  "(KHTML, like Gecko) Mobile/15E148 aweme_28.2.0 JsSdk/2.0 NetType/WIFI "
                  "Channel/App Store ByteLocale/zh Region/CN AppTheme/light "
                  "BytedanceWebview/d8a21c6 WKWebView/1",
    "douyin-android": "Mozilla/5.0 (Linux; Android 12; V2148A Build/SP1A.210812.003; wv) "
                      "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/90.0.4430.91 "
                      "Mobile Safari/537.36 aweme_230400 JsSdk/1.0 NetType/WIFI "
                      "Channel/vivo_1128_64 AppName/aweme app_version/23.4.0 ByteLocale/zh-CN "
                      "Region/CN AppSkin/white AppTheme/light BytedanceWebview/d8a21c6",
    "tiktok-android": "Mozilla/5.0 (Linux; Android 13; SM-S918B Build/TP1A.220624.014; wv) "
                      "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/119.0.6045.163 "
                      "Mobile Safari/537.36 trill_320403 JsSdk/1.0 NetType/WIFI "
                      "Channel/googleplay AppName/musical_ly app_version/32.4.3 ByteLocale/en "
                      "Region/US AppId/1233 BytedanceWebview/d8a21c6",
    "kuaishou-android": "Mozilla/5.0 (Linux; Android 12; PEGM00 Build/SKQ1.210216.001; wv) "
                        "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/90.0.4430.226 "
                        "KsWebView/1.8.90.585 (rel;r) Mobile Safari/537.36 Yoda/3.0.7-rc1 "
                        "ksNebula/11.3.20.5428 OS_PRO_BIT/64 MAX_PHY_MEM/7465 KDT/PHONE "
                        "ICFO/0 StatusHT/34 TitleHT/43 NetType/WIFI locale/zh-cn",
    "kuaishou-ios": "Mozilla/5.0 (iPhone; CPU iPhone OS 16_3 like Mac OS X) AppleWebKit/605.1.15 "
                    "(KHTML, like Gecko) Mobile/15E148 Kwai/11.2.40.5720 ISLP/0 StatusHT/47 "
                    "KDT/PHONE ISDM/0 TitleHT/44 NetType/WIFI ICFO/0 locale/zh-Hans "
                    "CT/0 Yoda/2.13.7 ISLB/0 WebViewType/WK BHT/102 AZPREFIX/yz",
    "weibo-ios": "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Mobile/15E148 Weibo (iPhone14,2__weibo__13.9.1__iphone__"
                 "os16.6)",
    "taobao-ios": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
                  "(KHTML, like Gecko) Mobile/15E148 AliApp(TB/10.27.10) WindVane/8.7.2 "
                  "1170x2532 WK",
    "qq-android": "Mozilla/5.0 (Linux; Android 11; M2012K11AC Build/RKQ1.200826.002; wv) "
                  "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/89.0.4389.72 "
                  "MQQBrowser/6.2 TBS/046011 Mobile Safari/537.36 V1_AND_SQ_8.8.68_2538_YYB_D "
                  "QQ/8.8.68.7265 NetType/WIFI WebP/0.3.0 Pixel/1080",
}

# Crawlers and link-preview fetchers: redirected, but no cookie and no billable click.
NOT_BUYERS: dict[str, str] = {
    "googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "googlebot-smartphone": "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) "
                            "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.71 Mobile "
                            "Safari/537.36 (compatible; Googlebot/2.1; "
                            "+http://www.google.com/bot.html)",
    "bingbot": "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "baiduspider": "Mozilla/5.0 (compatible; Baiduspider/2.0; "
                   "+http://www.baidu.com/search/spider.html)",
    "bytespider": "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Mobile Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)",
    "sogou": "Sogou web spider/4.0(+http://www.sogou.com/docs/help/webmasters.htm#07)",
    "360spider": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
                 "Gecko) Chrome/91.0.4472.114 Safari/537.36; 360Spider",
    "yandexbot": "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "facebookexternalhit": "facebookexternalhit/1.1 "
                           "(+http://www.facebook.com/externalhit_uatext.php)",
    "twitterbot": "Twitterbot/1.0",
    "slackbot": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "telegrambot": "TelegramBot (like TwitterBot)",
    "whatsapp": "WhatsApp/2.23.20.0 A",
    "discordbot": "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "linkedinbot": "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient "
                   "+http://www.linkedin.com)",
    "skype": "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 "
             "skype-url-preview@microsoft.com",
    "applebot": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, "
                "like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; "
                "+http://www.apple.com/go/applebot)",
    "headlesschrome": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                      "HeadlessChrome/120.0.6099.109 Safari/537.36",
    "lighthouse": "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 "
                  "(KHTML, like Gecko) Chrome/119.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse",
    "wget": "Wget/1.21.4",
    "go": "Go-http-client/1.1",
    "okhttp": "okhttp/4.12.0",
    "java": "Java/17.0.2",
    "scrapy": "Scrapy/2.11.0 (+https://scrapy.org)",
    "pinterestbot": "Mozilla/5.0 (compatible; Pinterestbot/1.0; +http://www.pinterest.com/bot.html)",
    "curl": "curl/8.4.0",
}

# Script clients and HTTP libraries as they announce themselves by default.  The
# README calls them bots: someone testing a link is not a buyer.
SCRIPT_CLIENTS: dict[str, str] = {
    "curl": "curl/8.4.0",
    "curl-old": "curl/7.29.0",
    "pycurl": "PycURL/7.45.2 libcurl/8.4.0 OpenSSL/3.0.11 zlib/1.2.13",
    "php-curl-libcurl": "libcurl/7.88.1",
    "wget": "Wget/1.21.4",
    "wget2": "wget2/2.1.0",
    "httpie": "HTTPie/3.2.2",
    "powershell-7": "Mozilla/5.0 (Windows NT 10.0; Microsoft Windows 10.0.22631; en-US) "
                    "PowerShell/7.4.0",
    "windows-powershell": "Mozilla/5.0 (Windows NT; Windows NT 10.0; en-US) "
                          "WindowsPowerShell/5.1.22621.2506",
    "postman": "PostmanRuntime/7.36.0",
    "insomnia": "insomnia/2023.5.8",
    "apache-httpclient": "Apache-HttpClient/4.5.14",
    "apache-httpclient-java": "Apache-HttpClient/5.2.1 (Java/17.0.9)",
    "guzzle": "GuzzleHttp/7",
    "ruby-rest-client": "rest-client/2.1.0 (linux-gnu x86_64) ruby/3.2.2p53",
    "ruby-faraday": "Faraday v2.7.12",
    "perl-http-tiny": "HTTP-Tiny/0.086",
    "perl-lwp": "LWP::Simple/6.72 libwww-perl/6.72",
    "perl-lwp-useragent": "lwp-request/6.72 libwww-perl/6.72",
    "node-undici": "undici",
    "python-requests": "python-requests/2.31.0",
    "python-urllib3": "python-urllib3/2.1.0",
    "httpx": "python-httpx/0.26.0",
    "go": "Go-http-client/2.0",
    "okhttp": "okhttp/4.12.0",
    "axios": "axios/1.6.2",
    "scrapy": "Scrapy/2.11.0 (+https://scrapy.org)",
}


@pytest.fixture
def filt() -> RequesterFilter:
    return RequesterFilter()


def test_tables_are_big_enough() -> None:
    assert len(BUYERS) + len(NOT_BUYERS) >= 20
    assert len(BUYERS) >= 10
    assert len(NOT_BUYERS) >= 10


@pytest.mark.parametrize("ua", list(BUYERS.values()), ids=list(BUYERS))
def test_buyers_are_not_bots(filt: RequesterFilter, ua: str) -> None:
    assert filt.bot_reason(ua.encode("latin-1")) is None


@pytest.mark.parametrize("ua", list(NOT_BUYERS.values()), ids=list(NOT_BUYERS))
def test_crawlers_and_previewers_get_a_reason(filt: RequesterFilter, ua: str) -> None:
    reason = filt.bot_reason(ua.encode("latin-1"))
    assert reason is not None
    assert reason.startswith("user agent matches ")
    # The reason names the matching pattern, which occurs in the User-Agent.
    matched = reason.removeprefix("user agent matches ").strip("'\"")
    assert matched in ua.lower()
    assert matched in DEFAULT_BOT_PATTERNS


def test_reason_names_the_pattern(filt: RequesterFilter) -> None:
    assert filt.bot_reason(b"Twitterbot/1.0") == "user agent matches 'bot'"
    assert filt.bot_reason(b"WhatsApp/2.23.20.0 A") == "user agent matches 'whatsapp'"


def test_matching_is_case_insensitive(filt: RequesterFilter) -> None:
    assert filt.bot_reason(b"GOOGLEBOT/2.1") is not None
    assert filt.bot_reason(b"facebookExternalHit/1.1") is not None


def test_empty_user_agent(filt: RequesterFilter) -> None:
    assert filt.bot_reason(b"") == "no user agent"
    assert filt.bot_reason(b"") == "no user agent"  # cached answer is the same


def test_non_ascii_user_agent_does_not_raise(filt: RequesterFilter) -> None:
    assert filt.bot_reason("Mozilla/5.0 (中文) Safari".encode()) is None
    assert filt.bot_reason(b"\xff\xfe\x00bot") is not None


def test_extra_patterns_from_the_constructor() -> None:
    f = RequesterFilter(["  MyInternalChecker ", "", "   ", "ZGrab"])
    assert f.bot_reason(b"Mozilla/5.0 myinternalchecker/1.0") == \
        "user agent matches 'myinternalchecker'"
    assert f.bot_reason(b"Mozilla/5.0 zgrab/0.x") is not None
    # Defaults still apply, and real browsers are still buyers.
    assert f.bot_reason(b"Googlebot/2.1") is not None
    assert f.bot_reason(BUYERS["chrome-android"].encode()) is None
    # Blank entries (an empty CPS_BOT_USER_AGENTS splits to [""]) add no match-everything pattern.
    g = RequesterFilter([""])
    assert g.bot_reason(BUYERS["safari-ios"].encode()) is None


def test_extra_patterns_are_literal_not_regex() -> None:
    f = RequesterFilter(["a.c", "(x"])
    assert f.bot_reason(b"abc") is None
    assert f.bot_reason(b"xx a.c yy") is not None
    assert f.bot_reason(b"(x") is not None


def test_cache_returns_the_same_results(filt: RequesterFilter) -> None:
    samples = [*BUYERS.values(), *NOT_BUYERS.values(), ""]
    first = [filt.bot_reason(ua.encode("latin-1")) for ua in samples]
    assert len(filt._cache) == len(set(samples))
    second = [filt.bot_reason(ua.encode("latin-1")) for ua in samples]
    assert first == second
    assert len(filt._cache) == len(set(samples))  # nothing re-added
    fresh = RequesterFilter()
    assert [fresh.bot_reason(ua.encode("latin-1")) for ua in samples] == first


def test_cache_answers_without_recomputing(filt: RequesterFilter) -> None:
    ua = BUYERS["wechat-ios"].encode()
    assert filt.bot_reason(ua) is None
    filt._cache[ua] = "planted"  # a hit must come from the cache, not the regex
    assert filt.bot_reason(ua) == "planted"


def test_cache_is_bounded(filt: RequesterFilter) -> None:
    limit = requester._UA_CACHE_MAX
    for i in range(3 * limit + 17):
        ua = f"Mozilla/5.0 build-{i}".encode()
        assert filt.bot_reason(ua) is None
        assert len(filt._cache) <= limit
    assert filt.bot_reason(b"Googlebot/2.1 x") is not None


@settings(max_examples=200, deadline=None)
@given(ua=st.binary(max_size=300))
def test_cached_and_fresh_answers_agree(ua: bytes) -> None:
    f = RequesterFilter()
    once = f.bot_reason(ua)
    assert f.bot_reason(ua) == once
    assert RequesterFilter().bot_reason(ua) == once
    if not ua:
        assert once == "no user agent"


# ------------------------------------------------------------- known misclassifications


def test_cubot_phone_in_wechat_is_a_buyer(filt: RequesterFilter) -> None:
    ua = (b"Mozilla/5.0 (Linux; Android 10; CUBOT X30 Build/QP1A.190711.020; wv) "
          b"AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/111.0.5563.116 Mobile "
          b"Safari/537.36 XWEB/5235 MMWEBSDK/20230805 MicroMessenger/8.0.42.2460(0x28002A58) "
          b"WeChat/arm64 Weixin NetType/WIFI Language/zh_CN ABI/arm64")
    assert filt.bot_reason(ua) is None
    # The exception is for the phone brand only: a crawler's "bot" still matches.
    assert filt.bot_reason(ua + b" (compatible; Googlebot/2.1)") == "user agent matches 'bot'"
    assert filt.bot_reason(b"Mozilla/5.0 (Linux; Android 9; CUBOT KING KONG 3) AppleWebKit/537.36 "
                           b"(KHTML, like Gecko) Chrome/118.0.0.0 Mobile Safari/537.36") is None


def test_pinterest_in_app_browser_is_a_buyer(filt: RequesterFilter) -> None:
    ua = (b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
          b"(KHTML, like Gecko) Mobile/15E148 [Pinterest/iOS]")
    assert filt.bot_reason(ua) is None


@pytest.mark.parametrize("ua", [b"python-requests/2.31.0", b"Python-urllib/3.11",
                                b"Python/3.11 aiohttp/3.9.1"])
def test_python_http_clients_are_not_buyers(filt: RequesterFilter, ua: bytes) -> None:
    assert filt.bot_reason(ua) is not None


@pytest.mark.parametrize("ua", list(SCRIPT_CLIENTS.values()), ids=list(SCRIPT_CLIENTS))
def test_script_clients_are_not_buyers(filt: RequesterFilter, ua: str) -> None:
    reason = filt.bot_reason(ua.encode("latin-1"))
    assert reason is not None
    matched = reason.removeprefix("user agent matches ").strip("'\"")
    assert matched in ua.lower()
    assert matched in DEFAULT_BOT_PATTERNS


def test_curl_reason_names_the_pattern(filt: RequesterFilter) -> None:
    assert filt.bot_reason(b"curl/8.4.0") == "user agent matches 'curl/'"


# Browser User-Agents that contain a script client's name as a substring
# somewhere, but not its product token: they stay buyers.
NEAR_MISSES: dict[str, str] = {
    "curly-device": "Mozilla/5.0 (Linux; Android 13; Curl 5G) AppleWebKit/537.36 (KHTML, like "
                    "Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
    "windows-chrome-with-powershell-word": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) "
                                           "AppleWebKit/537.36 (KHTML, like Gecko) "
                                           "Chrome/120.0.0.0 Safari/537.36 PowerShellHelper",
}


@pytest.mark.parametrize("ua", list(NEAR_MISSES.values()), ids=list(NEAR_MISSES))
def test_browsers_with_a_client_name_inside_are_buyers(filt: RequesterFilter, ua: str) -> None:
    assert filt.bot_reason(ua.encode("latin-1")) is None


def test_every_default_pattern_spares_the_buyer_table() -> None:
    """No single pattern matches any buyer: a new pattern cannot silently bill fewer clicks."""
    for word in DEFAULT_BOT_PATTERNS:
        hits = [name for name, ua in BUYERS.items() if word in ua.lower()]
        assert hits == [], (word, hits)


# ------------------------------------------------------------------ fetch_reason


def test_head_is_not_a_click() -> None:
    assert fetch_reason("HEAD", b"", b"") == "HEAD request"
    assert fetch_reason("HEAD", b"document", b"") == "HEAD request"


@pytest.mark.parametrize("purpose", [b"prefetch", b"prefetch;prerender",
                                     b"prefetch;anonymous-client-ip", b"preview"])
def test_prefetch_and_preview_purposes(purpose: bytes) -> None:
    assert fetch_reason("GET", b"", purpose) == "prefetch"
    assert fetch_reason("GET", b"document", purpose) == "prefetch"


@pytest.mark.parametrize("dest", [b"image", b"iframe", b"frame", b"script", b"empty", b"style",
                                  b"font", b"embed", b"object", b"video", b"worker"])
def test_sub_resource_loads(dest: bytes) -> None:
    reason = fetch_reason("GET", dest, b"")
    assert reason == f"sub-resource load (sec-fetch-dest {dest.decode()})"


def test_sub_resource_reason_is_truncated() -> None:
    reason = fetch_reason("GET", b"x" * 500, b"")
    assert reason is not None
    assert len(reason) < 60


@pytest.mark.parametrize("dest", [b"document", b""])
def test_top_level_navigation_is_a_possible_click(dest: bytes) -> None:
    assert fetch_reason("GET", dest, b"") is None


def test_unrelated_purpose_is_ignored() -> None:
    assert fetch_reason("GET", b"document", b"something-else") is None


@settings(max_examples=200, deadline=None)
@given(method=st.sampled_from(["GET", "HEAD", "POST"]), dest=st.binary(max_size=40),
       purpose=st.binary(max_size=40))
def test_fetch_reason_never_raises(method: str, dest: bytes, purpose: bytes) -> None:
    reason = fetch_reason(method, dest, purpose)
    if method == "HEAD":
        assert reason == "HEAD request"
    elif dest in (b"", b"document") and not any(
            w in purpose for w in (b"prefetch", b"preview", b"prerender")):
        assert reason is None
    else:
        assert isinstance(reason, str)
