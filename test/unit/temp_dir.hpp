// A fresh directory under the system temp dir, removed with its contents on destruction.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <stdexcept>
#include <string>

namespace kmesh::test {

class TempDir {
  public:
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "kmesh-test-XXXXXX").string();
        if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
        path_ = tmpl;
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }

    const std::filesystem::path& path() const { return path_; }
    // Creates `rel` (and parents) below the temp dir and returns its full path.
    std::filesystem::path mkdirs(const std::string& rel) const {
        std::filesystem::create_directories(path_ / rel);
        return path_ / rel;
    }

  private:
    std::filesystem::path path_;
};

}  // namespace kmesh::test
