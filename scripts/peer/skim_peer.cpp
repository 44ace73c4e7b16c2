// skim-peer: a small driver over llama.cpp's public C API (llama.h) that gives
// skim's tests reference token ids and logits from the reference engine.
//
//   skim-peer tokenize MODEL FILE [--add-special] [--parse-special]
//   skim-peer tokenize MODEL [--add-special] [--parse-special] --each FILE...
//       prints the token ids of FILE's bytes, one per line; with --each,
//       one line per file: PATH<TAB>ids separated by spaces
//   skim-peer logits MODEL TOKENS OUT [--threads N] [--ubatch N]
//                    [--kv-type f16|f32] [--flash-attn]
//       TOKENS: one token id per line. Evaluates them as one sequence and
//       writes OUT = "SKLG", u32 n_tokens, u32 n_vocab, then
//       float32 logits[n_tokens][n_vocab], all little-endian.
//
// CPU only. llama.cpp's own logging is dropped except errors (set
// SKIM_PEER_VERBOSE=1 to see all of it); everything goes to stderr, so stdout
// carries only results.
#include "llama.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

constexpr const char * kUsage =
    "usage:\n"
    "  skim-peer tokenize MODEL FILE [--add-special] [--parse-special]\n"
    "  skim-peer tokenize MODEL [--add-special] [--parse-special] --each FILE...\n"
    "  skim-peer logits MODEL TOKENS OUT [--threads N] [--ubatch N] [--kv-type f16|f32] [--flash-attn]\n";

// Logits for long sequences are computed in physical batches of at most this
// many tokens: one ubatch of n tokens needs an n x n attention score matrix
// per head, which stops fitting in memory somewhere past a few thousand.
constexpr uint32_t kDefaultMaxUbatch = 2048;

bool g_verbose = false;
ggml_log_level g_last_level = GGML_LOG_LEVEL_NONE;

void log_to_stderr(ggml_log_level level, const char * text, void * /*user_data*/) {
    // CONT lines continue the previous message and share its fate.
    if (level != GGML_LOG_LEVEL_CONT) g_last_level = level;
    if (g_verbose || g_last_level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

std::string read_file(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open '" + path + "': " + std::strerror(errno));
    std::ostringstream content;
    content << in.rdbuf();
    if (in.bad()) throw std::runtime_error("error reading '" + path + "'");
    return content.str();
}

long parse_integer(const std::string & text, const std::string & what, long min_value, long max_value) {
    errno = 0;
    char * end = nullptr;
    const long value = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || end == text.c_str() || *end != '\0' || errno == ERANGE)
        throw UsageError(what + ": '" + text + "' is not an integer");
    if (value < min_value || value > max_value)
        throw UsageError(what + ": " + text + " is out of range [" + std::to_string(min_value) + ", " +
                         std::to_string(max_value) + "]");
    return value;
}

// Owns the loaded model so every exit path frees it.
struct Model {
    llama_model * model = nullptr;
    Model(const std::string & path, bool vocab_only) {
        llama_model_params params = llama_model_default_params();
        params.n_gpu_layers = 0;
        params.vocab_only = vocab_only;
        model = llama_model_load_from_file(path.c_str(), params);
        if (!model) throw std::runtime_error("llama.cpp could not load model '" + path + "'");
    }
    ~Model() { llama_model_free(model); }
    Model(const Model &) = delete;
    Model & operator=(const Model &) = delete;
    const llama_vocab * vocab() const { return llama_model_get_vocab(model); }
};

std::vector<llama_token> tokenize_text(const llama_vocab * vocab, const std::string & text, bool add_special,
                                       bool parse_special) {
    if (text.size() > static_cast<size_t>(INT32_MAX)) throw std::runtime_error("input text is larger than 2 GiB");
    const int32_t text_len = static_cast<int32_t>(text.size());
    std::vector<llama_token> tokens(text.size() + 8);
    int32_t n = llama_tokenize(vocab, text.data(), text_len, tokens.data(), static_cast<int32_t>(tokens.size()),
                               add_special, parse_special);
    if (n == INT32_MIN) throw std::runtime_error("tokenization result overflows int32");
    if (n < 0) {  // buffer too small: -n is the exact size needed
        tokens.resize(static_cast<size_t>(-n));
        n = llama_tokenize(vocab, text.data(), text_len, tokens.data(), static_cast<int32_t>(tokens.size()),
                           add_special, parse_special);
        if (n < 0) throw std::runtime_error("llama_tokenize failed (" + std::to_string(n) + ")");
    }
    tokens.resize(static_cast<size_t>(n));
    return tokens;
}

// One FILE: its ids, one per line. --each FILE...: one line per file,
// "PATH<TAB>ids" (the format of tests/tokenize_driver), so a corpus needs one
// vocabulary load instead of one per document.
int run_tokenize(const std::vector<std::string> & args) {
    std::vector<std::string> positional;
    bool add_special = false;
    bool parse_special = false;
    bool each = false;
    for (const std::string & arg : args) {
        if (arg == "--add-special") add_special = true;
        else if (arg == "--parse-special") parse_special = true;
        else if (arg == "--each") each = true;
        else if (arg.rfind("--", 0) == 0) throw UsageError("tokenize: unknown option '" + arg + "'");
        else positional.push_back(arg);
    }
    if (positional.size() < 2 || (!each && positional.size() != 2)) throw UsageError("tokenize needs MODEL and FILE");
    const Model model(positional[0], /*vocab_only=*/true);
    for (size_t i = 1; i < positional.size(); ++i) {
        const std::vector<llama_token> tokens =
            tokenize_text(model.vocab(), read_file(positional[i]), add_special, parse_special);
        std::string out = each ? positional[i] + '\t' : std::string();
        for (size_t t = 0; t < tokens.size(); ++t) {
            out += std::to_string(tokens[t]);
            out += each ? (t + 1 < tokens.size() ? " " : "") : "\n";
        }
        if (each) out += '\n';
        std::fwrite(out.data(), 1, out.size(), stdout);
    }
    return 0;
}

std::vector<llama_token> read_token_ids(const std::string & path, int32_t n_vocab) {
    std::istringstream lines(read_file(path));
    std::vector<llama_token> ids;
    std::string line;
    size_t line_number = 0;
    while (std::getline(lines, line)) {
        ++line_number;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty()) continue;
        const std::string where = path + ":" + std::to_string(line_number);
        try {
            ids.push_back(static_cast<llama_token>(parse_integer(line, where + ": token id", 0, n_vocab - 1)));
        } catch (const UsageError & e) {
            throw std::runtime_error(e.what());  // bad data, not bad usage
        }
    }
    if (ids.empty()) throw std::runtime_error("no token ids in '" + path + "'");
    return ids;
}

void write_logits(std::ofstream & out, const std::string & path, uint32_t n_tokens, uint32_t n_vocab,
                  llama_context * ctx) {
    static_assert(sizeof(float) == 4, "float must be IEEE binary32");
    const uint16_t probe = 1;
    if (*reinterpret_cast<const uint8_t *>(&probe) != 1)
        throw std::runtime_error("skim-peer writes little-endian output and only runs on little-endian hosts");
    out.write("SKLG", 4);
    out.write(reinterpret_cast<const char *>(&n_tokens), sizeof n_tokens);
    out.write(reinterpret_cast<const char *>(&n_vocab), sizeof n_vocab);
    for (uint32_t i = 0; i < n_tokens; ++i) {
        const float * row = llama_get_logits_ith(ctx, static_cast<int32_t>(i));
        if (!row) throw std::runtime_error("llama.cpp returned no logits for position " + std::to_string(i));
        out.write(reinterpret_cast<const char *>(row), static_cast<std::streamsize>(sizeof(float) * n_vocab));
    }
    out.close();
    if (!out) throw std::runtime_error("error writing '" + path + "'");
}

struct LogitsOptions {
    int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    long max_ubatch = kDefaultMaxUbatch;
    ggml_type kv_type = GGML_TYPE_F16;
    bool flash_attn = false;
};

// Owns a llama_context so every exit path frees it.
struct Context {
    llama_context * ctx = nullptr;
    explicit Context(llama_context * created) : ctx(created) {}
    ~Context() { llama_free(ctx); }
    Context(const Context &) = delete;
    Context & operator=(const Context &) = delete;
};

void evaluate_and_write(const std::string & model_path, const std::string & tokens_path, const LogitsOptions & options,
                        std::ofstream & out, const std::string & out_path) {
    const Model model(model_path, /*vocab_only=*/false);
    const int32_t n_vocab = llama_vocab_n_tokens(model.vocab());
    const std::vector<llama_token> ids = read_token_ids(tokens_path, n_vocab);
    const uint32_t n_tokens = static_cast<uint32_t>(ids.size());
    const int32_t n_ctx_train = llama_model_n_ctx_train(model.model);
    if (n_ctx_train > 0 && n_tokens > static_cast<uint32_t>(n_ctx_train))
        throw std::runtime_error(std::to_string(n_tokens) + " tokens exceed the model's training context of " +
                                 std::to_string(n_ctx_train));

    // llama.cpp pads n_ctx to a multiple of 256 itself; doing it here keeps
    // the numbers we ask for and the ones it uses identical.
    const uint32_t n_ctx = (n_tokens + 255) / 256 * 256;
    llama_context_params params = llama_context_default_params();
    params.n_ctx = n_ctx;
    params.n_batch = n_ctx;  // the whole sequence is one logical batch
    params.n_ubatch = std::min<uint32_t>(n_ctx, static_cast<uint32_t>(options.max_ubatch));
    params.n_seq_max = 1;
    params.n_threads = options.threads;
    params.n_threads_batch = options.threads;
    params.flash_attn_type = options.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    params.type_k = options.kv_type;
    params.type_v = options.kv_type;
    params.offload_kqv = false;
    params.op_offload = false;
    params.no_perf = true;
    const Context context(llama_init_from_model(model.model, params));
    if (!context.ctx)
        throw std::runtime_error("llama.cpp could not create a context for " + std::to_string(n_tokens) + " tokens");

    llama_batch batch = llama_batch_init(static_cast<int32_t>(n_tokens), 0, 1);
    batch.n_tokens = static_cast<int32_t>(n_tokens);
    for (uint32_t i = 0; i < n_tokens; ++i) {
        batch.token[i] = ids[i];
        batch.pos[i] = static_cast<llama_pos>(i);
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;  // every position's logits are wanted
    }
    const int32_t status = llama_decode(context.ctx, batch);
    llama_batch_free(batch);
    if (status != 0) throw std::runtime_error("llama_decode failed with status " + std::to_string(status));
    write_logits(out, out_path, n_tokens, static_cast<uint32_t>(n_vocab), context.ctx);
}

int run_logits(const std::vector<std::string> & args) {
    std::vector<std::string> positional;
    LogitsOptions options;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string & arg = args[i];
        auto value = [&](const char * option) -> const std::string & {
            if (i + 1 >= args.size()) throw UsageError(std::string("logits: ") + option + " needs a value");
            return args[++i];
        };
        if (arg == "--threads") {
            options.threads = static_cast<int>(parse_integer(value("--threads"), "--threads", 1, 1024));
        } else if (arg == "--ubatch") {
            options.max_ubatch = parse_integer(value("--ubatch"), "--ubatch", 1, 1 << 20);
        } else if (arg == "--kv-type") {
            const std::string & type = value("--kv-type");
            if (type == "f16") options.kv_type = GGML_TYPE_F16;
            else if (type == "f32") options.kv_type = GGML_TYPE_F32;
            else throw UsageError("--kv-type must be f16 or f32, got '" + type + "'");
        } else if (arg == "--flash-attn") {
            options.flash_attn = true;
        } else if (arg.rfind("--", 0) == 0) {
            throw UsageError("logits: unknown option '" + arg + "'");
        } else {
            positional.push_back(arg);
        }
    }
    if (positional.size() != 3) throw UsageError("logits needs MODEL, TOKENS and OUT");
    const std::string & out_path = positional[2];
    // Opened before the (slow) evaluation so a bad OUT fails fast.
    std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot create '" + out_path + "': " + std::strerror(errno));
    try {
        evaluate_and_write(positional[0], positional[1], options, out, out_path);
    } catch (...) {
        out.close();
        std::remove(out_path.c_str());  // never leave a truncated logits file behind
        throw;
    }
    return 0;
}

}  // namespace

int main(int argc, char ** argv) {
    const char * verbose = std::getenv("SKIM_PEER_VERBOSE");
    g_verbose = verbose && *verbose && std::strcmp(verbose, "0") != 0;
    llama_log_set(log_to_stderr, nullptr);

    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "-h" || args[0] == "--help") {
        std::fputs(kUsage, args.empty() ? stderr : stdout);
        return args.empty() ? 2 : 0;
    }
    const std::string command = args[0];
    args.erase(args.begin());
    llama_backend_init();
    int rc = 1;
    try {
        if (command == "tokenize") rc = run_tokenize(args);
        else if (command == "logits") rc = run_logits(args);
        else throw UsageError("unknown command '" + command + "'");
    } catch (const UsageError & e) {
        std::fprintf(stderr, "skim-peer: %s\n%s", e.what(), kUsage);
        rc = 2;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "skim-peer: error: %s\n", e.what());
        rc = 1;
    }
    llama_backend_free();
    return rc;
}
