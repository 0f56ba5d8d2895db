# cmake/cuda.cmake - the CUDA executor (exec/cuda/*.c, ops/cuda/*.cu) and the
# kernel lab (tools/kernels/*.cu).  Included by the top CMakeLists.txt when
# QG_CUDA is ON and a CUDA compiler was found; a machine without a GPU still
# builds everything (CI does), and `--backend cuda` then fails cleanly at
# run time.
#
#   -DCMAKE_CUDA_ARCHITECTURES=90     what to build for (default: 90, Hopper;
#                                     add 80 or 89 for Ampere / Ada)
#
# The top CMakeLists adds -Wall -Wextra -Werror (and the sanitizer flags)
# for every language; nvcc takes neither, so those options are narrowed to C
# here and CUDA gets the host-compiler equivalents through -Xcompiler plus
# nvcc's own -Werror.  CUDA host code is not sanitized.

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES 90 CACHE STRING "CUDA architectures to build for")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_FLAGS_RELEASE "-O3")

# C-only options: narrow each to C (directory, for targets made later, and
# the qmoe library, made before this file was included).
function(qg_cuda_narrow_options out)
  set(res "")
  foreach(opt IN LISTS ARGN)
    if(opt MATCHES "^\\$<")
      list(APPEND res "${opt}")
    else()
      list(APPEND res "$<$<COMPILE_LANGUAGE:C>:${opt}>")
    endif()
  endforeach()
  set(${out} "${res}" PARENT_SCOPE)
endfunction()
get_directory_property(_qg_dir_opts COMPILE_OPTIONS)
qg_cuda_narrow_options(_qg_dir_opts ${_qg_dir_opts})
set_directory_properties(PROPERTIES COMPILE_OPTIONS "${_qg_dir_opts}")
get_target_property(_qg_lib_opts qmoe COMPILE_OPTIONS)
if(_qg_lib_opts)
  qg_cuda_narrow_options(_qg_lib_opts ${_qg_lib_opts})
  set_target_properties(qmoe PROPERTIES COMPILE_OPTIONS "${_qg_lib_opts}")
endif()
set(QG_CUDA_WARN
  "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Werror>"
  "$<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>")
add_compile_options(${QG_CUDA_WARN})

file(GLOB QG_CUDA_SOURCES CONFIGURE_DEPENDS
  ${CMAKE_CURRENT_SOURCE_DIR}/exec/cuda/*.c ${CMAKE_CURRENT_SOURCE_DIR}/ops/cuda/*.cu)
target_sources(qmoe PRIVATE ${QG_CUDA_SOURCES})
set_target_properties(qmoe PROPERTIES CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}")
target_compile_options(qmoe PRIVATE ${QG_CUDA_WARN})
target_link_libraries(qmoe PUBLIC CUDA::cudart_static)
target_compile_definitions(qmoe PUBLIC QG_HAVE_CUDA=1)
add_compile_definitions(QG_HAVE_CUDA=1)
message(STATUS "CUDA executor: on (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES})")

# The kernel lab: one program per tools/kernels/*.cu (numbered versions of a
# kernel, each checked against a float64 reference and timed).
file(GLOB QG_KERNEL_LAB CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/tools/kernels/*.cu)
foreach(src ${QG_KERNEL_LAB})
  get_filename_component(name ${src} NAME_WE)
  add_executable(lab_${name} ${src})
  target_link_libraries(lab_${name} PRIVATE qmoe)
  target_compile_options(lab_${name} PRIVATE ${QG_CUDA_WARN})
endforeach()

# The decode-step tracer (tools/cupti): a preload library of CUPTI activity
# records that tools/trace-decode.sh runs qmoe-graph under; built when the
# toolkit has CUPTI (measurement only, nothing links it).
if(TARGET CUDA::cupti)
  add_library(qg_cupti_trace SHARED tools/cupti/qg_cupti_trace.c)
  target_link_libraries(qg_cupti_trace PRIVATE CUDA::cupti)
endif()
